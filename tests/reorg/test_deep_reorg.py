"""A deep reorg after finality: the run is rolled back to the mint and re-completed.

Confirmations(2); the run (reserve -> mint -> credit -> notify) completes; then a reorg
replaces the chain from *below* the mint's block (``anvil_reorg``, a competing branch
from a snapshot, or ``anvil_rollback``).  Expected:

* a reorg event in ``cf_reorgs`` with the depth, fork height, orphaned and new hashes;
* the compensations of the steps that depended on the mint (notify, credit) run exactly
  once, newest first; the step before the mint (reserve) is not compensated and the
  mint itself is not burned: it is re-included;
* the mint is re-included under the same key, nonce and signed bytes (one attempt ever);
* the ledger nets one credit; ``app.journal(run)`` keeps the invalidated rows, each
  marked with the reorg's reason.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.storage.schema import reorgs
from devnet import ReorgResult, mark_fork_point, reorg, reorg_to, rollback

from ._rig import CHAIN, Rig, label, register_mint_flow


@pytest.mark.parametrize("how", ["anvil_reorg", "snapshot", "rollback"])
async def test_deep_reorg_after_finality_rolls_back_dependents_once(rig: Rig, how: str) -> None:
    register_mint_flow(rig, cf.Confirmations(2))
    app, net = rig.app, rig.net
    async with rig.worker():
        await rig.step()
        point = None
        if how == "snapshot":
            point = mark_fork_point(net)  # the competing branch forks one block below the mint
            await rig.mine(1)
        h = await app.astart("mint_flow", {"id": "order-1"})
        await rig.drive(lambda: rig.app.status(h.id).done, what="the first completion")
        first = await rig.status(h.id)
        assert first.status == "completed", first.error
        assert rig.effects() == ["reserve", "credit", "notify"]

        sub = rig.sub("order-1")
        assert sub.state == "final"
        (attempt,) = rig.attempts(sub.id)
        block, old_block_hash, nonce = int(sub.block_number), sub.block_hash, int(sub.nonce)
        await rig.step()  # the tracker has stored every block up to the head

        if how == "anvil_reorg":
            result = reorg(net, rig.head() - block + 2)
        elif how == "snapshot":
            assert point is not None
            result = reorg_to(net, point)
        else:  # the chain gets shorter, then the new branch grows from the fork: a shorter
            # chain alone reads as a node behind, its first block at a stored height as a reorg
            removed = rollback(net, rig.head() - block + 2)
            await rig.mine(1)
            grown = net.rpc("eth_getBlockByNumber", "latest", False)["hash"]
            result = ReorgResult(fork_height=block - 2, old_hashes=removed, new_hashes=[grown])
        assert result.fork_height == block - 2 and old_block_hash in result.old_hashes
        assert rig.chain_tx(attempt.tx_hash) is None, "the devnet must not have replayed the mint"

        stats = await rig.step()
        assert stats.reorg_depth == result.depth
        reopened = await rig.status(h.id)
        assert reopened.status != "completed", "the run must be reopened for its rollback"

        await rig.drive(lambda: rig.app.status(h.id).status == "completed", what="the re-completion")

    st = await rig.status(h.id)
    assert st.status == "completed", st.error

    # the reorg event, as recorded
    (event,) = app.reorgs()
    assert event.chain == "local" and event.depth == result.depth
    assert event.fork_number == result.fork_height
    assert event.old_hashes == result.old_hashes and event.new_hashes == result.new_hashes
    assert event.affected_txs == [attempt.tx_hash]
    with app.engine.begin() as conn:
        (row,) = conn.execute(sa.select(reorgs)).all()
    assert row.depth == result.depth and json.loads(row.old_hashes) == result.old_hashes

    # compensations of the dependents exactly once, newest first; then re-executed once
    assert rig.effects() == ["reserve", "credit", "notify", "unnotify", "debit", "credit", "notify"]
    credits = rig.effects().count("credit") - rig.effects().count("debit")
    assert credits == 1, "the ledger nets exactly one credit"
    assert rig.ledger.lines()[-2:] == [f"credit {attempt.tx_hash}", f"notify {attempt.tx_hash}"]
    assert st.compensations == {}, "rolled-back compensations are history (journal), not live outcomes"

    # same key, same nonce, same signed bytes, a new block
    final = rig.sub("order-1")
    assert (final.id, final.state, final.nonce, final.tx_hash) == (sub.id, "final", nonce, attempt.tx_hash)
    assert final.block_hash != old_block_hash and final.block_hash not in result.old_hashes
    assert len(rig.attempts(sub.id)) == 1
    again = rig.chain_tx(attempt.tx_hash)
    assert again is not None and int(again.nonce) == nonce
    assert st.output["tx"] == attempt.tx_hash and st.output["nonce"] == nonce
    assert st.output["block_hash"] == final.block_hash
    assert rig.balance() == 5, "minted once on the canonical chain"

    # the journal keeps what was invalidated, with the reason
    journal = app.journal(h.id)
    gone = [e for e in journal if e.invalidated]
    assert sorted(label(e) for e in gone) == sorted(
        ["mint", "credit", "notify", "compensate:notify", "compensate:credit"])
    for e in gone:
        assert e.status == "invalidated"
        assert e.reason is not None and e.reason.startswith(f"reorg #{event.id} on local")
        assert old_block_hash in e.reason
    comps = [label(e) for e in gone if e.kind == "compensation"]
    assert comps == ["compensate:notify", "compensate:credit"], "journaled newest first"
    assert rig.live(h.id) == ["reserve", "mint", "credit", "notify"]
    live = {label(e): e for e in journal if not e.invalidated}
    assert live["mint"].output["block_hash"] == final.block_hash
    assert all(e.status == "ok" and e.reason is None for e in live.values())
    reserve = [e for e in journal if e.key == "reserve"]
    assert len(reserve) == 1 and not reserve[0].invalidated, "the step before the mint is kept"


async def test_a_reorg_landing_while_a_failed_run_compensates_reopens_nothing(rig: Rig) -> None:
    """The run fails after its mint turned final and is compensating when a reorg takes
    the mint's block: it ends failed with every compensation run once (reopened, it ran
    the steps after the mint and their undos again, and undid the step before the mint
    twice)."""
    gate = threading.Event()

    def debit(tx: str) -> None:
        rig.ledger.hit(f"debit {tx}")
        assert gate.wait(20), "the reorg was not recorded"  # the reorg lands while the run compensates

    def credit(tx: str) -> str:
        rig.ledger.hit(f"credit {tx}")
        return tx

    def boom(tx: str) -> None:
        rig.ledger.hit("boom")
        raise ValueError("payment refused")

    @rig.app.workflow("fails_after_mint")
    async def flow(ctx: cf.Context, ev: dict[str, Any]) -> str:
        await ctx.step("reserve", rig.ledger.hit, "reserve", compensate=lambda _: rig.ledger.hit("unreserve"))
        r = await ctx.submit("mint", chain=CHAIN, tx=rig.mint(5), idempotency_key=ev["id"],
                             finality=cf.Confirmations(2))
        tx = await ctx.step("credit", credit, r.tx_hash, compensate=debit)
        await ctx.step("boom", boom, tx, retry=cf.Retry(max_attempts=1))
        return tx

    async with rig.worker():
        await rig.step()
        h = await rig.app.astart("fails_after_mint", {"id": "order-1"})
        await rig.drive(lambda: any(e.startswith("debit") for e in rig.effects()), what="the compensations")
        reorg(rig.net, rig.head() - int(rig.sub("order-1").block_number) + 2)
        await rig.step()  # the final mint's block is gone: a rollback is requested
        gate.set()
        await rig.drive(lambda: rig.app.status(h.id).done, what="the run to end")
        for _ in range(10):  # whatever reopened it would go on now
            await rig.mine()
            await rig.step()
    assert rig.app.status(h.id).status == "failed"
    effects = [e.split(" ")[0] for e in rig.effects()]
    assert effects == ["reserve", "credit", "boom", "debit", "unreserve"], rig.effects()


async def test_a_signal_a_rolled_back_wait_had_received_is_delivered_again(rig: Rig) -> None:
    """The run waited for an approval after its mint, got it once, and completed; a deep
    reorg rolls the wait back with the steps after the mint.  Its approver sent the
    signal once: the wait running again receives it again instead of waiting forever."""

    def credit(tx: str, who: str) -> str:
        rig.ledger.hit(f"credit {who}")
        return tx

    @rig.app.workflow("approve_after_mint")
    async def flow(ctx: cf.Context, ev: dict[str, Any]) -> str:
        r = await ctx.submit("mint", chain=CHAIN, tx=rig.mint(5), idempotency_key=ev["id"],
                             finality=cf.Confirmations(2))
        who = await ctx.wait_for("approve")
        return await ctx.step("credit", credit, r.tx_hash, who, compensate=lambda _: rig.ledger.hit("debit"))

    async with rig.worker():
        await rig.step()
        h = await rig.app.astart("approve_after_mint", {"id": "order-1"})
        await rig.drive(lambda: "approve" in rig.live(h.id), what="the wait")
        await rig.app.asignal(h.id, "approve", "alice")
        await rig.drive(lambda: rig.app.status(h.id).done, what="completion")
        reorg(rig.net, rig.head() - int(rig.sub("order-1").block_number) + 2)
        await rig.step()
        await rig.drive(lambda: rig.effects().count("credit") == 2 and rig.app.status(h.id).done,
                        what="the second completion")
    assert rig.app.status(h.id).status == "completed"
    assert rig.ledger.lines() == ["credit alice", "debit", "credit alice"]


async def test_a_deep_reorg_rolls_back_every_run_sharing_the_mint(rig: Rig) -> None:
    """Two runs share one mint by its key (the second finds the first's intent on the
    wire and waits on it); both complete.  A reorg from below the mint's block rolls
    both back, each one's credit and notify undone and redone, and both end with the
    mint's new block: one mint on chain, one signed version."""
    register_mint_flow(rig, cf.Confirmations(2))
    async with rig.worker():
        await rig.step()
        first = await rig.app.astart("mint_flow", {"id": "shared"})
        await rig.drive(lambda: [s.state for s in rig.subs()] in (["broadcast"], ["included"]), mine=False,
                        what="the first mint on the wire")
        second = await rig.app.astart("mint_flow", {"id": "shared"})
        await rig.drive(lambda: rig.app.status(first.id).done and rig.app.status(second.id).done, what="both runs")
        sub = rig.sub("shared")
        await rig.step()
        reorg(rig.net, rig.head() - int(sub.block_number) + 2)
        await rig.step()
        for h in (first, second):
            assert (await rig.status(h.id)).status != "completed", "every sharing run is reopened"
        await rig.drive(lambda: all(rig.app.status(h.id).status == "completed" for h in (first, second))
                        and rig.effects().count("credit") == 4, what="both re-completions")
    final = rig.sub("shared")
    assert final.block_hash != sub.block_hash and final.tx_hash == sub.tx_hash
    for h in (first, second):
        st = await rig.status(h.id)
        assert st.output["block_hash"] == final.block_hash
        assert sorted(label(e) for e in rig.invalidated(h.id)) == sorted(
            ["mint", "credit", "notify", "compensate:notify", "compensate:credit"])
    assert sorted(rig.effects()) == sorted(["reserve"] * 2 + ["credit", "notify"] * 4 + ["unnotify", "debit"] * 2)
    assert len(rig.attempts(sub.id)) == 1 and rig.balance() == 5, "minted once"
