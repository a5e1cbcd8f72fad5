"""Payouts through the whole engine on a real regtest node (Debian's litecoind 0.21, or
bitcoind), on SQLite and Postgres: fee bumps while mining is paused, the fee budget's
stuck flag, shallow and deep reorgs, a double-spend mined on a fork, batched payouts
rolled back by a reorg, and the amount and address edge cases.

Every run goes app -> worker -> ``ctx.submit`` -> the chain's real tracker (stepped by
the test after each block it mines, see ``_rig``).  What is asserted is read from the
node (blocks, mempool, UTXO set, the signed bytes decoded by the node) and from the
tables.  One node serves the module: each test pays from a wallet of a fresh seed to
payees of another, so tests never see each other's coins.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pytest

import chainflow as cf
from adapters.bitcoin.addresses import dust_limit, script_for
from adapters.bitcoin.fees import fee_for, vsize
from adapters.bitcoin.transaction import Prevout, sign
from chainflow import metrics
from chainflow.chain import chainstore
from chainflow.chain.adapter import TxRejected
from chainflow.errors import LeaseLostError
from chainflow.testing import CallLog
from devnet import RegtestNode

from ..adapters._btc import BIP84_ADDRESSES
from ..conftest import require_regtest
from ..engine._util import running_worker, wait_until
from ._rig import CHAIN, NodeRig, register_payout, sats

pytestmark = [pytest.mark.regtest, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def node() -> Iterator[RegtestNode]:
    require_regtest()
    with RegtestNode() as started:
        yield started


def no_estimate(node: RegtestNode, btc: Any) -> None:
    """The fee tests' premise: the node has no fee estimate, so versions start at the
    fallback rate (true of a young regtest chain)."""
    estimate = node.rpc("estimatesmartfee", btc.fee_target)
    assert "feerate" not in estimate, f"the node estimates fees now ({estimate}): the test needs the fallback"


@pytest.fixture
def ledger(tmp_path: Any) -> CallLog:
    return CallLog(tmp_path / "ledger.log")


@pytest.fixture
async def rig(node: RegtestNode, db_url: str, ledger: CallLog) -> AsyncIterator[NodeRig]:
    made = NodeRig(node, db_url, ledger)
    yield made
    await made.close()


# --- fee bumps ----------------------------------------------------------------------


async def test_a_low_fee_payout_is_bumped_while_mining_is_paused_and_confirms_once(
        node: RegtestNode, db_url: str, ledger: CallLog) -> None:
    """The payout goes out at the fallback fee rate (regtest has no estimate); blocks
    keep coming, but empty: the tracker replaces it every block.  Once blocks take
    transactions again the newest version confirms, alone: every version spent the same
    inputs, each paid more than the one it replaced (BIP125), and each is recorded."""
    rig = NodeRig(node, db_url, ledger, chain={"fallback_feerate": 1000}, bump_blocks=1)
    no_estimate(node, rig.btc)
    try:
        coins = sorted([node.fund(rig.btc.sender(), 300_000), node.fund(rig.btc.sender(), 200_000)])
        payee = rig.payees[0]
        async with rig.worker():
            h = await rig.app.astart("payout", {"id": "o-1", "to": payee, "sats": 400_000})
            await rig.drive(lambda: rig.state("o-1") == "broadcast", mine=False, what="the first broadcast")
            sub = rig.sub("o-1")
            for _ in range(10):  # mining paused for it
                if len(rig.attempts(sub.id)) >= 3:
                    break
                await rig.mine_empty()
            candidates = rig.attempts(sub.id)
            assert len(candidates) >= 3, "bumped at every empty block"
            in_mempool = set(node.mempool())
            assert [a.tx_hash in in_mempool for a in candidates] == [False] * (len(candidates) - 1) + [True], \
                "each replacement evicted the version before it"
            st = await rig.until_done(h.id, what="the confirmation")
        assert st.status == "completed", st.error
        sub = rig.sub("o-1")
        assert rig.reserved(sub.id) == coins
        decoded = [rig.decode(a.raw) for a in rig.attempts(sub.id)]
        assert [d["txid"] for d in decoded] == [a.tx_hash for a in candidates]
        assert all(d["inputs"] == coins for d in decoded), "every version spends all the reserved coins"
        assert all(d["vin"][0]["sequence"] < 0xFFFFFFFE for d in decoded), "each signals BIP125 replaceability"
        fees = [d["fee"] for d in decoded]
        assert fees == [rig.fees(a)["fee"] for a in candidates]
        rates = [rig.fees(a)["feerate"] for a in candidates]
        assert rates[0] == 1000
        for i in range(1, len(candidates)):
            # BIP125 rules 3, 4 and 6: a higher fee rate, and an absolute fee higher by at
            # least the incremental relay fee (1000 sat/kvB) for the replacement's size
            assert rates[i] > rates[i - 1] and fees[i] >= fees[i - 1] + fee_for(1000, decoded[i]["vsize"])
        mined = [a.tx_hash for a in candidates if rig.onchain(a.tx_hash)]
        assert mined == [candidates[-1].tx_hash] == [sub.tx_hash] == [st.output["tx"]], "only one is on chain"
        assert not set(node.mempool()) & {a.tx_hash for a in candidates}
        assert st.output["fee"] == fees[-1] and sub.stuck_since is None
        assert rig.paid(payee) == [(f"{sub.tx_hash}:0", 400_000)]
        assert rig.held(sub.id) == [], "the final payout's coins are recorded as spent"
        assert rig.effects() == ["reserve", "credit", "notify"]
    finally:
        await rig.close()


async def test_bumps_stop_at_the_fee_budget_and_the_payout_is_flagged_stuck_not_failed(
        node: RegtestNode, db_url: str, ledger: CallLog) -> None:
    """max_feerate 2500 leaves room for one bump (1000 -> 2000 sat/kvB; the next needs
    3000): then the submission is flagged stuck (``stuck_since``, the metric), keeps its
    last version on the wire and its run waiting; when blocks take it, it confirms."""
    rig = NodeRig(node, db_url, ledger, chain={"fallback_feerate": 1000, "max_feerate": 2500}, bump_blocks=1)
    no_estimate(node, rig.btc)
    before = metrics.REGISTRY.get_sample_value("chainflow_submissions_stuck_total", {"chain": CHAIN}) or 0.0
    try:
        (coin,) = [node.fund(rig.btc.sender(), 300_000)]
        payee = rig.payees[0]
        async with rig.worker():
            h = await rig.app.astart("payout", {"id": "o-1", "to": payee, "sats": 100_000})
            await rig.drive(lambda: rig.state("o-1") == "broadcast", mine=False, what="the first broadcast")
            sub = rig.sub("o-1")
            for _ in range(6):
                await rig.mine_empty()
            sub = rig.sub("o-1")
            candidates = rig.attempts(sub.id)
            assert [rig.fees(a)["feerate"] for a in candidates] == [1000, 2000], "no bump past the budget"
            assert sub.stuck_since is not None and sub.state == "broadcast" and sub.error is None
            after = metrics.REGISTRY.get_sample_value("chainflow_submissions_stuck_total", {"chain": CHAIN})
            assert after == before + 1
            assert candidates[-1].tx_hash in node.mempool(), "the last version is still on the wire"
            assert not rig.app.status(h.id).done and rig.held(sub.id) == [coin]
            st = await rig.until_done(h.id, what="the confirmation")
        assert st.status == "completed", st.error
        sub = rig.sub("o-1")
        assert sub.tx_hash == candidates[-1].tx_hash == st.output["tx"] and sub.stuck_since is None
        assert [a.tx_hash for a in candidates if rig.onchain(a.tx_hash)] == [sub.tx_hash]
        assert rig.paid(payee) == [(f"{sub.tx_hash}:0", 100_000)]
    finally:
        await rig.close()


async def test_a_payout_without_change_is_flagged_stuck_when_a_bump_could_not_raise_its_fee(
        node: RegtestNode, db_url: str, ledger: CallLog) -> None:
    """A coin only a little above the payment leaves change below dust: every fee rate
    then signs the same transaction, the whole remainder its fee.  A bump has nothing to
    raise: the payout is flagged stuck (not a second candidate with the same hash, which
    the tracker could not record, iteration after iteration, bumping and batching
    nothing else on the chain), and confirms when blocks take it."""
    rig = NodeRig(node, db_url, ledger, chain={"fallback_feerate": 10_000, "max_feerate": 20_000}, bump_blocks=1)
    no_estimate(node, rig.btc)
    try:
        coin = node.fund(rig.btc.sender(), 103_000)
        payee = rig.payees[0]
        async with rig.worker():
            h = await rig.app.astart("payout", {"id": "o-1", "to": payee, "sats": 100_000})
            await rig.drive(lambda: rig.state("o-1") == "broadcast", mine=False, what="the first broadcast")
            for _ in range(4):
                await rig.mine_empty()
            sub = rig.sub("o-1")
            (candidate,) = rig.attempts(sub.id)
            assert rig.fees(candidate)["fee"] == 3_000, "no change: the remainder is the fee"
            assert sub.stuck_since is not None and sub.state == "broadcast" and sub.error is None
            assert not rig.app.status(h.id).done and rig.held(sub.id) == [coin]
            st = await rig.until_done(h.id, what="the confirmation")
        assert st.status == "completed", st.error
        assert rig.paid(payee) == [(f"{candidate.tx_hash}:0", 100_000)]
    finally:
        await rig.close()


# --- reorgs -----------------------------------------------------------------------


async def test_a_payout_cancelled_on_the_wire_is_refunded_once_it_is_final(rig: NodeRig, node: RegtestNode) -> None:
    """Cancelled once its payout is in the node's mempool: nothing can unsend it, so the
    run waits for it to be final (Confirmations(2)), then refunds it and unreserves the
    order, newest first, and ends cancelled.  The payout is on chain once."""
    node.fund(rig.btc.sender(), 500_000)
    payee = rig.payees[1]
    async with rig.worker():
        h = await rig.app.astart("payout", {"id": "o-cancel", "to": payee, "sats": 120_000})
        await rig.drive(lambda: rig.state("o-cancel") == "broadcast", mine=False, what="the broadcast")
        (attempt,) = rig.attempts()
        await rig.app.acancel(h.id)
        st = await rig.until_done(h.id, what="the cancellation")
    assert st.status == "cancelled", st.error
    assert st.compensations == {"pay": "ok", "reserve": "ok"}
    assert rig.ledger.lines() == ["reserve o-cancel", f"refund {attempt.tx_hash}", "unreserve o-cancel"]
    assert rig.sub("o-cancel").state == "final"
    assert rig.paid(payee) == [(f"{attempt.tx_hash}:0", 120_000)]


async def test_a_replay_reports_a_payout_changed_to_another_payee_or_amount(rig: NodeRig, node: RegtestNode) -> None:
    """A completed payout replayed with the same code is unchanged; with new code paying
    another address, or another amount, under the same key, the payment step is
    reported changed (the recorded receipt is what the replay returns)."""
    from chainflow.replay.report import Change

    node.fund(rig.btc.sender(), 400_000)
    payee, other = rig.payees[2], rig.payees[3]
    async with rig.worker():
        h = await rig.app.astart("payout", {"id": "o-replay", "to": payee, "sats": 90_000})
        assert (await rig.until_done(h.id, what="the payout")).status == "completed"

    def paying(to: str, amount: int) -> Any:
        async def flow(ctx: cf.Context, ev: dict[str, Any]) -> None:
            await ctx.step("reserve", str, ev["id"])  # recorded: the replay returns what it returned
            await ctx.submit("pay", chain=CHAIN, tx=rig.btc.pay(to, sats=amount), idempotency_key=f"payout:{ev['id']}",
                             finality=cf.Confirmations(2))
        return flow

    for to, amount, change in ((payee, 90_000, Change.UNCHANGED), (other, 90_000, Change.TX_CHANGED),
                               (payee, 900_000, Change.TX_CHANGED)):
        report = await rig.app.areplay(h.id, workflow=paying(to, amount))
        (step,) = [s for s in report.steps if s.op == "submit"]
        assert step.change == change, (to, amount, step.change, step.detail)


async def test_a_shallow_reorg_before_finality_re_includes_the_payout_and_compensates_nothing(
        rig: NodeRig, node: RegtestNode) -> None:
    """Confirmations(2); the payout's block (one confirmation) is replaced by two empty
    blocks: the payout returns to the mempool and to pending, is mined again on the new
    chain, and the run completes once, with the same transaction."""
    node.fund(rig.btc.sender(), 500_000)
    payee = rig.payees[0]
    async with rig.worker():
        h = await rig.app.astart("payout", {"id": "o-1", "to": payee, "sats": 150_000})
        await rig.drive(lambda: rig.state("o-1") == "broadcast", mine=False, what="the broadcast")
        (attempt,) = rig.attempts()
        await rig.mine()
        sub = rig.sub("o-1")
        assert sub.state == "included" and rig.onchain(attempt.tx_hash)
        reorg = node.reorg(1)
        assert attempt.tx_hash in reorg.orphaned_txs and attempt.tx_hash in node.mempool()
        stats = await rig.step()
        assert stats.reorg_depth == 1
        assert rig.state("o-1") == "broadcast" and not rig.app.status(h.id).done, "back to pending"
        st = await rig.until_done(h.id, what="the completion")
    assert st.status == "completed", st.error
    final = rig.sub("o-1")
    assert (final.id, final.state, final.tx_hash) == (sub.id, "final", attempt.tx_hash)
    mined_tx = rig.onchain(attempt.tx_hash)
    assert mined_tx is not None
    assert final.block_hash not in reorg.old_hashes and mined_tx["blockhash"] == final.block_hash
    assert rig.attempts() == [attempt], "nothing re-signed"
    (event,) = rig.app.reorgs()
    assert event.depth == 1 and event.affected_txs == [attempt.tx_hash]
    assert rig.effects() == ["reserve", "credit", "notify"], "nothing compensated"
    assert rig.paid(payee) == [(f"{attempt.tx_hash}:0", 150_000)]


async def _bumped(rig: NodeRig, payee: str) -> tuple[Any, int]:
    """Payout A (100_000 sats to ``payee``) sent, then fee-bumped while blocks come
    empty: its run handle and submission id."""
    a = await rig.app.astart("payout", {"id": "A", "to": payee, "sats": 100_000})
    await rig.drive(lambda: rig.state("A") == "broadcast", mine=False, what="A's broadcast")
    a_id = rig.sub("A").id
    while len(rig.attempts(a_id)) < 2:
        await rig.mine_empty()
    return a, int(a_id)


async def test_a_payout_never_spends_the_change_of_a_payout_that_is_not_final(
        node: RegtestNode, db_url: str, ledger: CallLog) -> None:
    """A is fee-bumped while mining is paused and its bump A2 is included: one
    confirmation of the two A asks for.  B, started then, used to be given A2's change
    (the wallet's largest coin); a one-block reorg whose block holds A's first version
    A1 made that outpoint never exist, and B stayed ``broadcast`` for ever, its coin
    reserved.  Now B takes the funded coin: A settles with A1, B is paid, each once."""
    rig = NodeRig(node, db_url, ledger, chain={"fallback_feerate": 1000}, bump_blocks=1)
    try:
        node.fund(rig.btc.sender(), 1_000_000)
        small = node.fund(rig.btc.sender(), 200_000)  # enough for B, far less than A2's change
        first, second = rig.payees[0], rig.payees[1]
        async with rig.worker():
            a, a_id = await _bumped(rig, first)
            a1, a2 = rig.attempts(a_id)[:2]
            await rig.mine()
            assert rig.state("A") == "included" and rig.sub("A").tx_hash == a2.tx_hash
            b = await rig.app.astart("payout", {"id": "B", "to": second, "sats": 100_000})
            await rig.drive(lambda: rig.state("B") == "broadcast", mine=False, what="B's broadcast")
            assert rig.reserved(rig.sub("B").id) == [small], "not A2's change while A is not final"
            node.reorg(1, include=[bytes(a1.raw).hex()])
            await rig.drive(lambda: rig.app.status(a.id).done and rig.app.status(b.id).done, what="both settled")
        assert [rig.app.status(h.id).status for h in (a, b)] == ["completed", "completed"]
        assert rig.sub("A").tx_hash == a1.tx_hash and rig.paid(first) == [(f"{a1.tx_hash}:0", 100_000)]
        assert rig.paid(second) == [(f"{rig.sub('B').tx_hash}:0", 100_000)]
    finally:
        await rig.close()


async def test_a_payout_spending_change_a_reorg_past_finality_unmade_fails_and_frees_it(
        node: RegtestNode, db_url: str, ledger: CallLog) -> None:
    """Confirmations(1).  A is fee-bumped while mining is paused and its bump A2 is
    mined: A is final, so B, started then, spends A2's change (the wallet's only coin).
    A reorg deeper than A's finality mines A's first version A1 instead: A's run is
    rolled back and completes again on A1, and B's input can never exist.  B used to
    stay ``broadcast`` for ever, its coin reserved.  Now B's step fails naming the coin
    and A1, its run is compensated, B's payee is never paid, A's is paid once, and the
    reservation goes once A1 is as final as B asked (one confirmation)."""
    rig = NodeRig(node, db_url, ledger, finality=cf.Confirmations(1), chain={"fallback_feerate": 1000},
                  bump_blocks=1)
    try:
        node.fund(rig.btc.sender(), 500_000)
        first, second = rig.payees[0], rig.payees[1]
        async with rig.worker():
            a, a_id = await _bumped(rig, first)
            a1 = rig.attempts(a_id)[0]
            done = await rig.until_done(a.id, what="A's completion")
            assert done.status == "completed", done.error
            a2 = rig.sub("A")
            assert a2.tx_hash != a1.tx_hash and rig.onchain(a2.tx_hash)
            change = f"{a2.tx_hash}:1"
            b = await rig.app.astart("payout", {"id": "B", "to": second, "sats": 100_000})
            await rig.drive(lambda: rig.state("B") == "broadcast", mine=False, what="B's broadcast")
            b_id = rig.sub("B").id
            assert rig.reserved(b_id) == [change], "A is final: its change is B's coin"
            (spend,) = rig.attempts(b_id)

            reorg = node.reorg(node.height() - int(a2.block_number) + 1, include=[bytes(a1.raw).hex()])
            assert a2.block_hash in reorg.old_hashes and rig.onchain(a1.tx_hash)
            assert not {a2.tx_hash, spend.tx_hash} & set(node.mempool()), "the node dropped A2 and B's spend"
            await rig.drive(lambda: rig.app.status(a.id).done and rig.app.status(b.id).done, timeout=30,
                            what="both settled")
            st = rig.app.status(b.id)
            assert st.status == "failed" and st.error is not None
            assert change in st.error["message"] and a1.tx_hash in st.error["message"], st.error
            sub = rig.sub("B")
            assert sub.state == "failed" and change in sub.error and a1.tx_hash in sub.error
            await rig.drive(lambda: rig.reservations(b_id) == [], mine=True, timeout=30,
                            what="B's reservation released")
    finally:
        await rig.close()
    assert rig.app.status(a.id).status == "completed"
    assert rig.sub("A").tx_hash == a1.tx_hash and rig.paid(first) == [(f"{a1.tx_hash}:0", 100_000)]
    assert rig.effects("A") == ["reserve", "credit", "notify", "unnotify", "debit", "credit", "notify"]
    assert rig.effects("B") == ["reserve", "unreserve"], "never paid: nothing to refund"
    assert rig.paid(second) == [] and rig.onchain(spend.tx_hash) is None
    assert rig.app.status(b.id).compensations == {"reserve": "ok"}
    assert [r.submission_id for r in rig.reservations()] == [a_id] and rig.held(a_id) == []


async def test_a_deep_reorg_after_finality_rolls_back_and_the_same_payout_reconfirms_once(
        rig: NodeRig, node: RegtestNode) -> None:
    """Confirmations(2): the run completes; then both blocks are replaced.  The payout's
    step is invalidated, its dependents compensated newest first (notify's, then credit's), the payout (not refunded) confirms again under the same key with the same
    transaction, the dependents run again: one payment on the canonical chain."""
    node.fund(rig.btc.sender(), 500_000)
    payee = rig.payees[0]
    async with rig.worker():
        h = await rig.app.astart("payout", {"id": "o-1", "to": payee, "sats": 150_000})
        first = await rig.until_done(h.id, what="the first completion")
        assert first.status == "completed", first.error
        sub = rig.sub("o-1")
        (attempt,) = rig.attempts()
        assert rig.held(sub.id) == [] and rig.reserved(sub.id), "final: coins recorded as spent"
        depth = node.height() - int(sub.block_number) + 1
        reorg = node.reorg(depth)
        assert sub.block_hash in reorg.old_hashes and attempt.tx_hash in node.mempool()
        stats = await rig.step()
        assert stats.reorg_depth == depth
        assert rig.app.status(h.id).status != "completed", "reopened for its rollback"
        assert rig.held(sub.id) == rig.reserved(sub.id), "un-finalised: the coins are held again"
        st = await rig.until_done(h.id, what="the re-completion")
    assert st.status == "completed", st.error
    assert rig.effects() == ["reserve", "credit", "notify", "unnotify", "debit", "credit", "notify"]
    final = rig.sub("o-1")
    assert (final.id, final.state, final.tx_hash) == (sub.id, "final", attempt.tx_hash)
    assert final.block_hash not in reorg.old_hashes
    mined_tx = rig.onchain(attempt.tx_hash)
    assert mined_tx is not None
    assert mined_tx["blockhash"] == final.block_hash == st.output["block_hash"]
    assert rig.attempts() == [attempt], "one signed version: the same txid re-confirmed"
    (event,) = rig.app.reorgs()
    assert event.depth == depth and event.affected_txs == [attempt.tx_hash]
    assert rig.paid(payee) == [(f"{attempt.tx_hash}:0", 150_000)], "paid once on the canonical chain"
    assert rig.held(final.id) == []


async def test_a_double_spend_mined_on_a_fork_fails_the_payout_and_frees_its_coin_once_final(
        node: RegtestNode, db_url: str, ledger: CallLog) -> None:
    """The payout is mined (one confirmation of the three it asks for); a fork replaces
    its block with one holding another spend of its reserved coin, signed with the
    wallet's key but not by chainflow.  The step fails naming the coin and the spender,
    compensations run, the node drops our payout; the coin stays reserved by the failed
    intent until the conflicting spend has three confirmations, then is released."""
    rig = NodeRig(node, db_url, ledger, finality=cf.Confirmations(3))
    try:
        coin = node.fund(rig.btc.sender(), 500_000)
        payee, elsewhere = rig.payees[0], rig.payees[1]
        async with rig.worker():
            h = await rig.app.astart("payout", {"id": "o-1", "to": payee, "sats": 150_000})
            await rig.drive(lambda: rig.state("o-1") == "broadcast", mine=False, what="the broadcast")
            (attempt,) = rig.attempts()
            await rig.mine()
            sub = rig.sub("o-1")
            assert sub.state == "included" and rig.held(sub.id) == [coin]

            funding = node.rpc("getrawtransaction", coin.split(":")[0], True)["vout"][int(coin.split(":")[1])]
            spent = Prevout(coin, sats(funding["value"]), bytes.fromhex(funding["scriptPubKey"]["hex"]))
            conflict = sign(rig.btc.keyring, rig.btc.network, [spent],
                            [(script_for(elsewhere, rig.btc.network, CHAIN), 300_000)], 2000)
            reorg = node.reorg(1, blocks=1, include=[conflict.raw.hex()])
            assert attempt.tx_hash in reorg.orphaned_txs and attempt.tx_hash not in node.mempool()
            assert rig.onchain(conflict.tx_hash)

            st = await rig.until_done(h.id, what="the failure")
            sub = rig.sub("o-1")
            assert st.status == "failed"
            assert st.error is not None
            assert coin in st.error["message"] and "chainflow did not sign" in st.error["message"]
            assert sub.state == "failed" and coin in sub.error and conflict.tx_hash in sub.error
            assert rig.effects() == ["reserve", "unreserve"], "never paid: nothing to refund"
            # mined with the reorg (asserted above): in the active chain, so not None
            while (confirmations := cast("dict[str, Any]", rig.onchain(conflict.tx_hash))["confirmations"]) < 3:
                held = rig.reservations(sub.id)
                assert [(r.outpoint, r.spent_at_block) for r in held] == [(coin, None)], \
                    f"released at {confirmations} confirmation(s) of the conflicting spend"
                await rig.mine()
            assert rig.reservations() == [], "the conflicting spend is final: the coin is released"
    finally:
        await rig.close()
    assert rig.onchain(attempt.tx_hash) is None and attempt.tx_hash not in node.mempool()
    assert rig.paid(payee) == [] and rig.paid(elsewhere) == [(f"{conflict.tx_hash}:0", 300_000)]
    assert rig.app.status(h.id).compensations == {"reserve": "ok"}


async def test_a_deep_reorg_of_a_batch_rolls_back_each_member_and_pays_each_once(
        node: RegtestNode, db_url: str, ledger: CallLog) -> None:
    """Three payouts share one batch transaction; all complete on Confirmations(2).  A
    reorg replaces the batch's block and the one above: every member run is rolled back
    and completes again on the re-mined batch, each payee paid once, by its own output."""
    rig = NodeRig(node, db_url, ledger, batching={CHAIN: cf.Batching(window=0.2, max_size=10)})
    try:
        node.fund(rig.btc.sender(), 500_000)
        amounts = [50_000, 51_000, 52_000]
        async with rig.worker():
            handles = [await rig.app.astart("payout", {"id": f"o-{i}", "to": rig.payees[i], "sats": sats_})
                       for i, sats_ in enumerate(amounts)]
            # without a tracker step, whose batcher would form a batch of those queued so far
            await wait_until(lambda: all(rig.state(f"o-{i}") == "queued" for i in range(3)), 60,
                             what="all three queued")
            for h in handles:
                st = await rig.until_done(h.id, what="the first completions")
                assert st.status == "completed", st.error
            members = [rig.sub(f"o-{i}") for i in range(3)]
            (batch,) = [s for s in rig.subs() if s.batch_id == s.id]
            (attempt,) = rig.attempts(batch.id)
            assert [m.batch_id for m in members] == [batch.id] * 3
            depth = node.height() - int(batch.block_number) + 1
            reorg = node.reorg(depth)
            assert batch.block_hash in reorg.old_hashes and attempt.tx_hash in node.mempool()
            await rig.step()
            assert not any(rig.app.status(h.id).status == "completed" for h in handles), "every member reopened"
            for h in handles:
                st = await rig.until_done(h.id, what="the re-completions")
                assert st.status == "completed", st.error
    finally:
        await rig.close()
    for i, (h, sats_) in enumerate(zip(handles, amounts, strict=True)):
        assert rig.effects(f"o-{i}") == ["reserve", "credit", "notify", "unnotify", "debit", "credit", "notify"]
        member = rig.sub(f"o-{i}")
        assert (member.state, member.tx_hash) == ("final", attempt.tx_hash)
        assert member.block_hash not in reorg.old_hashes
        # which output pays whom follows the order the members were queued in, which
        # concurrent starts do not fix: the chain says which one it is
        ((outpoint, amount),) = rig.paid(rig.payees[i])  # each payee paid once
        assert amount == sats_ and outpoint.startswith(f"{attempt.tx_hash}:")
        assert rig.app.status(h.id).output == {"tx": attempt.tx_hash, "block_hash": member.block_hash,
                                               "fee": rig.fees(attempt)["fee"], "output": int(outpoint.split(":")[1])}
    assert rig.attempts() == [attempt], "one batch transaction, signed once"
    (event,) = rig.app.reorgs()
    assert event.depth == depth and event.affected_txs == [attempt.tx_hash]


# --- amounts and addresses ------------------------------------------------------------


async def test_bad_amounts_and_addresses_are_refused_before_anything_is_recorded(
        rig: NodeRig, node: RegtestNode) -> None:
    """Dust, a mainnet address on this regtest chain, a float and a Decimal amount: each
    payout step fails with an error naming what is wrong; no intent, coin or signed
    transaction is recorded, nothing reaches the node."""
    node.fund(rig.btc.sender(), 500_000)
    payee, mainnet = rig.payees[0], BIP84_ADDRESSES[0]
    limit = dust_limit(script_for(payee, rig.btc.network, CHAIN), rig.btc.network)
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "dust": ({"to": payee, "sats": 200},
                 f"payment of 200 sats to {payee} is below the dust limit of {limit} sats"),
        "network": ({"to": mainnet, "sats": 150_000},
                    f"{mainnet!r} is a mainnet address; chain {CHAIN!r} is on {rig.btc.network.name}"),
        "float": ({"to": payee, "sats": 150_000.0}, "must be an int of satoshis, got float 150000.0"),
        "decimal": ({"to": payee, "sats": "decimal"}, "must be an int of satoshis, got Decimal"),
    }
    mempool = set(node.mempool())
    async with rig.worker():
        handles = {name: await rig.app.astart("payout", {"id": name, **tx}) for name, (tx, _) in cases.items()}
        for name, h in handles.items():
            st = await rig.until_done(h.id, mine=False, what=name)
            assert st.status == "failed", name
            assert st.error is not None, name
            assert cases[name][1] in st.error["message"], (name, st.error)
            assert rig.effects(name) == ["reserve", "unreserve"]
    assert limit > 200
    assert rig.subs() == [] and rig.reservations() == [] and rig.attempts() == []
    assert set(node.mempool()) == mempool
    with pytest.raises(ValueError, match=re.escape(cases["network"][1])):
        rig.btc.pay(mainnet, sats=150_000)  # where the user writes it, too
    with pytest.raises(ValueError, match="never floats"):
        rig.btc.pay(payee, sats=cast(Any, 1.5))  # a float on purpose


@pytest.mark.parametrize("policy", [cf.Finalized(), cf.Safe()], ids=repr)
async def test_a_finality_tag_bitcoin_lacks_is_refused_before_anything_is_recorded(
        node: RegtestNode, db_url: str, ledger: CallLog, policy: cf.Finality) -> None:
    """Bitcoin reports no ``finalized`` or ``safe`` block: a payout asking for either
    used to be signed, paid and mined, and its run then waited for ever.  Now the step
    fails naming the policy and the chain, its earlier step is compensated, and no
    intent, coin or signed transaction is recorded; nothing reaches the node."""
    rig = NodeRig(node, db_url, ledger, finality=policy)
    try:
        node.fund(rig.btc.sender(), 500_000)
        mempool = set(node.mempool())
        async with rig.worker():
            h = await rig.app.astart("payout", {"id": "o-1", "to": rig.payees[0], "sats": 100_000})
            st = await rig.until_done(h.id, mine=False, what="the refusal")
        assert st.status == "failed" and st.error is not None
        assert f"is {policy!r}, which chain {CHAIN!r} cannot satisfy" in st.error["message"], st.error
        assert rig.effects("o-1") == ["reserve", "unreserve"]
        assert rig.subs() == [] and rig.reservations() == [] and rig.attempts() == []
        assert set(node.mempool()) == mempool and rig.paid(rig.payees[0]) == []
    finally:
        await rig.close()


async def test_a_payout_of_the_whole_balance_spends_every_coin_without_a_change_output(
        node: RegtestNode, db_url: str, ledger: CallLog) -> None:
    """Two coins, and a payout leaving one satoshi less than the dust limit over the
    fee: both coins are spent, the would-be change goes to the fee, and on chain the
    transaction pays exactly the payout and nothing else; the wallet holds nothing."""
    rig = NodeRig(node, db_url, ledger, chain={"fallback_feerate": 1000, "max_feerate": 1000})
    try:
        coins = sorted([node.fund(rig.btc.sender(), 300_000), node.fund(rig.btc.sender(), 200_000)])
        payee, net = rig.payees[0], rig.btc.network
        change_script = script_for(rig.btc.sender(), net, CHAIN)
        with_change = fee_for(1000, vsize(2, [script_for(payee, net, CHAIN), change_script]))
        left_over = with_change + dust_limit(change_script, net) - 1
        amount = 500_000 - left_over
        async with rig.worker():
            h = await rig.app.astart("payout", {"id": "o-1", "to": payee, "sats": amount})
            st = await rig.until_done(h.id, what="the completion")
        assert st.status == "completed", st.error
        sub = rig.sub("o-1")
        (attempt,) = rig.attempts(sub.id)
        tx = rig.decode(attempt.raw)
        assert tx["inputs"] == coins == rig.reserved(sub.id)
        assert [(o["scriptPubKey"]["hex"], sats(o["value"])) for o in tx["vout"]] == [
            (script_for(payee, net, CHAIN).hex(), amount)], "no change output"
        assert tx["fee"] == left_over == st.output["fee"] == rig.fees(attempt)["fee"]
        assert rig.onchain(attempt.tx_hash) and rig.paid(payee) == [(f"{attempt.tx_hash}:0", amount)]
        assert rig.paid(rig.btc.sender()) == [] and await rig.btc.coins(rig.btc.sender()) == [], "nothing left"
    finally:
        await rig.close()


async def test_insufficient_funds_fail_the_payout_with_nothing_reserved(rig: NodeRig, node: RegtestNode) -> None:
    """The wallet holds 100_000 sats; a payout of 1_000_000 fails with the adapter's
    reason, its intent recorded but no coin reserved and nothing signed, and the coin
    stays spendable: the next payout takes it."""
    coin = node.fund(rig.btc.sender(), 100_000)
    async with rig.worker():
        big = await rig.app.astart("payout", {"id": "big", "to": rig.payees[0], "sats": 1_000_000})
        st = await rig.until_done(big.id, mine=False, what="the failure")
        assert st.status == "failed"
        assert st.error is not None
        assert st.error["type"] == "chainflow.errors.StepError"
        assert "chainflow.errors.SubmissionFailedError: " in st.error["message"]
        assert re.search(r"insufficient funds: need \d+ sats \(payments 1000000 \+ fee budget \d+ at max_feerate "
                         r"\d+ sat/kvB\), unreserved coins hold 100000", st.error["message"]), st.error
        sub = rig.sub("big")
        assert sub.state == "intent" and rig.reservations() == [] and rig.attempts() == []
        assert rig.effects("big") == ["reserve", "unreserve"]
        small = await rig.app.astart("payout", {"id": "small", "to": rig.payees[1], "sats": 50_000})
        done = await rig.until_done(small.id, what="the next payout")
    assert done.status == "completed", done.error
    assert rig.reserved(rig.sub("small").id) == [coin]
    assert rig.paid(rig.payees[0]) == [] and len(rig.paid(rig.payees[1])) == 1


async def test_insufficient_funds_say_how_much_change_waits_for_its_payout_to_be_final(
        rig: NodeRig, node: RegtestNode) -> None:
    """Change is offered only once its payout is final (docs/bitcoin.md): a payout
    that needs it before then fails, and its error says the wallet holds that change
    rather than reading as an empty wallet ("unreserved coins hold 0")."""
    node.fund(rig.btc.sender(), 1_000_000)  # the wallet's only coin
    async with rig.worker():  # Confirmations(2)
        await rig.app.astart("payout", {"id": "A", "to": rig.payees[0], "sats": 100_000})
        await rig.drive(lambda: rig.state("A") == "broadcast", mine=False, what="A's broadcast")
        await rig.mine()
        assert rig.state("A") == "included"  # one confirmation: its change is confirmed, A is not final
        (change,) = [c for c in await rig.btc.coins(rig.btc.sender()) if c.outpoint.startswith(rig.sub("A").tx_hash)]
        b = await rig.app.astart("payout", {"id": "B", "to": rig.payees[1], "sats": 100_000})
        st = await rig.until_done(b.id, mine=False, what="B's failure")
    assert st.status == "failed" and st.error is not None
    assert "unreserved coins hold 0" in st.error["message"]
    assert (f"not offered: {change.value} in change of payouts not final yet (offered once they are)"
            in st.error["message"]), st.error["message"]


# --- signing failures -------------------------------------------------------------------


async def test_a_worker_lost_while_failing_an_unsignable_payout_leaves_it_failed_once_with_its_coin_free(
        rig: NodeRig, node: RegtestNode, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Signing fails for good (a signer refusing the payout, after the adapter's own
    checks of the coin bound to it): the payout is failed and its coin released.  The
    worker loses its lease right as it records that (its fenced write refused, as after
    a freeze or a crash), and a fresh worker resumes the run.  The two writes used to be
    separate transactions: the coin was released, the payout left ``allocated`` over no
    coin, and the resumed run signed it over nothing, failing with "a payment needs the
    intent's reserved outpoints, got []" while the payout stayed allocated until the
    tracker abandoned it under another reason.  Now the run fails with the signer's
    reason, the payout is failed with it and its coin free, the run is compensated once,
    nothing is signed or paid."""
    coin = node.fund(rig.btc.sender(), 500_000)
    real_sign = rig.btc.sign
    refusal = "the signing service refuses this payout"

    async def refusing(request: dict[str, Any], domain: Any, fees: dict[str, int] | None) -> Any:
        await real_sign(request, domain, fees)
        raise TxRejected(refusal, reverted=False)

    lost: list[int] = []  # the payout, each time the first worker tried to record its failure
    mark_failed = chainstore.mark_failed

    def losing_the_lease(conn: Any, sub_id: int, error: str, now: float) -> None:
        if fresh is None:
            lost.append(sub_id)
            raise LeaseLostError("the worker failing the payout")
        mark_failed(conn, sub_id, error, now)

    fresh: cf.Chainflow | None = None
    monkeypatch.setattr(rig.btc, "sign", refusing)
    monkeypatch.setattr(chainstore, "mark_failed", losing_the_lease)
    async with rig.worker():
        h = await rig.app.astart("payout", {"id": "o-1", "to": rig.payees[0], "sats": 100_000})
        await wait_until(lambda: lost, 30, what="the worker's lease lost while failing the payout")
    fresh = cf.Chainflow(db_url, chains=[rig.btc], tracker=rig.config, lease_seconds=1.0)
    register_payout(fresh, rig.ledger, cf.Confirmations(2))
    try:
        async with running_worker(fresh, track=False):
            await wait_until(lambda: fresh.status(h.id).done, 30, what="the resumed run")
    finally:
        fresh.engine.dispose()
    st = rig.app.status(h.id)
    assert st.status == "failed" and st.error is not None
    assert f"signing failed permanently: {refusal}" in st.error["message"], st.error
    sub = rig.sub("o-1")
    assert (sub.id, sub.state, sub.error) == (lost[0], "failed", refusal), "failed with the signer's reason"
    assert rig.reservations() == [] and rig.attempts() == [], "the coin is free, nothing was signed"
    assert rig.effects() == ["reserve", "unreserve"] and st.compensations == {"reserve": "ok"}
    for _ in range(2):  # the tracker has nothing left to abandon or release
        await rig.mine()
    assert (rig.sub("o-1").state, rig.sub("o-1").error) == ("failed", refusal) and rig.reservations() == []
    assert [c.outpoint for c in await rig.btc.coins(rig.btc.sender())] == [coin]
    assert rig.paid(rig.payees[0]) == []
