"""A deep reorg rolls back only the mint's branch and what followed the join.

    a, b = await ctx.gather(mint_branch(), offchain_branch())
        mint_branch:     submit mint -> credit          (credit compensated)
        offchain_branch: wait "go"   -> email           (email compensated)
    settle(a, b)                                        (compensated)

The test sends "go" only after the mint's step is journaled, so the sibling's email is
recorded *after* the mint: it must be kept because it is in a sibling branch, not
because it happened to come first.  After the reorg: settle and credit are compensated
(settle first) and re-run once; the email is neither compensated nor re-run.

The first phase is also the regression test for a submission in one branch while its
sibling is parked on a signal: the mint must be sent and settled without waiting for
"go" (it used to be unwound mid-RPC, the run suspended waiting for "go" only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import chainflow as cf
from devnet import reorg

from ._rig import CHAIN, Rig, label


def _effect(rig: Rig, name: str) -> Callable[[str], str]:
    """A step body that writes ``name arg`` to the ledger and returns ``arg``."""
    def do(arg: str) -> str:
        rig.ledger.hit(f"{name} {arg}")
        return arg
    return do


def register(rig: Rig) -> None:
    ledger = rig.ledger

    def credit(tx_hash: str) -> str:
        ledger.hit(f"credit {tx_hash}")
        return tx_hash

    def debit(tx_hash: str) -> None:
        ledger.hit(f"debit {tx_hash}")

    def email(to: str) -> str:
        ledger.hit(f"email {to}")
        return to

    def unemail(to: str) -> None:
        ledger.hit(f"unemail {to}")

    def settle(a: str, b: str) -> str:
        ledger.hit(f"settle {a} {b}")
        return f"{a}|{b}"

    def unsettle(ref: str) -> None:
        ledger.hit(f"unsettle {ref}")

    @rig.app.workflow("two_branches")
    async def two_branches(ctx: cf.Context, ev: dict[str, Any]) -> str:
        async def mint_branch() -> str:
            r = await ctx.submit("mint", chain=CHAIN, tx=rig.mint(7), idempotency_key=ev["id"],
                                 finality=cf.Confirmations(2))
            return await ctx.step("credit", credit, r.tx_hash, compensate=debit)

        async def offchain_branch() -> str:
            await ctx.wait_for("go")
            return await ctx.step("email", email, ev["customer"], compensate=unemail)

        a, b = await ctx.gather(mint_branch(), offchain_branch())
        return await ctx.step("settle", settle, a, b, compensate=unsettle)


async def test_reorg_rolls_back_only_the_mint_branch_and_after_the_join(rig: Rig) -> None:
    register(rig)
    app, net = rig.app, rig.net
    async with rig.worker():
        await rig.step()
        h = await app.astart("two_branches", {"id": "order-1", "customer": "ann"})
        await rig.drive(lambda: "0/credit" in rig.live(h.id), what="the mint branch to finish")
        parked = await rig.wait_status(h.id, ("waiting",))  # the sibling still waits for "go"
        assert parked.waiting_on == ["go"]
        await app.asignal(h.id, "go")
        await rig.wait_status(h.id, ("completed",))
        assert rig.effects() == ["credit", "email", "settle"]

        sub = rig.sub("order-1")
        block = int(sub.block_number)
        await rig.step()
        result = reorg(net, rig.head() - block + 2)
        stats = await rig.step()
        assert stats.reorg_depth == result.depth
        await rig.drive(lambda: rig.app.status(h.id).status == "completed" and len(rig.effects()) >= 6,
                        what="the re-completion")

    st = await rig.status(h.id)
    assert st.status == "completed", st.error
    effects = rig.effects()
    assert effects == ["credit", "email", "settle", "unsettle", "debit", "credit", "settle"]
    assert effects.count("email") == 1 and "unemail" not in effects

    journal = app.journal(h.id)
    order = [label(e) for e in journal]
    assert order.index("1/email") > order.index("0/mint"), "the sibling's step was recorded after the mint"
    gone = sorted(label(e) for e in journal if e.invalidated)
    assert gone == sorted(["0/mint", "0/credit", "settle", "0/compensate:credit", "compensate:settle"])
    kept = [e for e in journal if e.branch == "1"]
    assert [e.key for e in kept] == ["go", "email"]
    assert not any(e.invalidated for e in kept), "the sibling branch is untouched"
    assert sorted(rig.live(h.id)) == sorted(["0/mint", "0/credit", "1/go", "1/email", "settle"])
    final = rig.sub("order-1")
    assert final.state == "final" and final.nonce == sub.nonce and final.tx_hash == sub.tx_hash
    assert st.output == f"{sub.tx_hash}|ann"


async def test_one_reorg_orphaning_two_sibling_branches_mints_rolls_back_both(rig: Rig) -> None:
    """Each branch mints and credits; one reorg orphans both mints after both were
    final.  Neither branch depends on the other, so neither rollback covers the other:
    both credits are undone and redone, and each mint journals its new block."""

    def credit(tx_hash: str) -> str:
        rig.ledger.hit(f"credit {tx_hash}")
        return tx_hash

    @rig.app.workflow("two_mints")
    async def two_mints(ctx: cf.Context, ev: dict[str, Any]) -> list[str]:
        async def branch(i: int) -> str:
            r = await ctx.submit("mint", chain=CHAIN, tx=rig.mint(1 + i), idempotency_key=f"{ev['id']}-{i}",
                                 finality=cf.Confirmations(2))
            return await ctx.step("credit", credit, r.tx_hash, compensate=lambda tx: rig.ledger.hit(f"debit {tx}"))

        return await ctx.gather(branch(0), branch(1))

    async with rig.worker():
        await rig.step()
        h = await rig.app.astart("two_mints", {"id": "o"})
        await rig.drive(lambda: rig.app.status(h.id).done, what="the first completion")
        low = min(int(rig.sub("o-0").block_number), int(rig.sub("o-1").block_number))
        await rig.step()
        reorg(rig.net, rig.head() - low + 2)
        await rig.step()
        await rig.drive(lambda: rig.effects().count("credit") == 4 and rig.app.status(h.id).done
                        and rig.sub("o-0").state == rig.sub("o-1").state == "final", what="both redone")
    assert rig.app.status(h.id).status == "completed"
    gone = sorted(label(e) for e in rig.app.journal(h.id) if e.invalidated)
    assert {"0/mint", "0/credit", "1/mint", "1/credit"} <= set(gone), gone
    live = {label(e): e for e in rig.app.journal(h.id) if not e.invalidated}
    for i in (0, 1):
        assert live[f"{i}/mint"].output["block_hash"] == rig.sub(f"o-{i}").block_hash, "a stale receipt kept"
    assert sorted(rig.effects()) == ["credit"] * 4 + ["debit"] * 2


async def test_branches_opened_after_the_mints_branch_joined_are_rolled_back_with_it(rig: Rig) -> None:
    """Two rounds of branches: the mint and a quote, joined; then a shipment and a note,
    opened after that join, so either may use the mint (the second round's branches are
    "0#1" and "1#1": siblings of the mint's branch by name only).  After a reorg of the
    mint: both second-round steps are undone and redone; the quote, which ran beside
    the mint, is kept."""

    @rig.app.workflow("two_rounds")
    async def two_rounds(ctx: cf.Context, ev: dict[str, Any]) -> str:
        async def mint() -> str:
            r = await ctx.submit("mint", chain=CHAIN, tx=rig.mint(3), idempotency_key=ev["id"],
                                 finality=cf.Confirmations(2))
            return r.tx_hash

        async def step(name: str, arg: str) -> str:
            return await ctx.step(name, _effect(rig, name), arg, compensate=_effect(rig, f"un{name}"))

        tx, quote = await ctx.gather(mint(), step("quote", "q"))
        shipped, noted = await ctx.gather(step("ship", tx), step("note", quote))
        return f"{shipped}|{noted}"

    async with rig.worker():
        await rig.step()
        h = await rig.app.astart("two_rounds", {"id": "rounds"})
        await rig.drive(lambda: rig.app.status(h.id).done, what="the first completion")
        assert sorted(rig.effects()) == ["note", "quote", "ship"]
        await rig.step()
        reorg(rig.net, rig.head() - int(rig.sub("rounds").block_number) + 2)
        await rig.step()
        await rig.drive(lambda: rig.effects().count("ship") == 2 and rig.app.status(h.id).done,
                        what="the second round redone")
    st = await rig.status(h.id)
    assert st.status == "completed", st.error
    effects = rig.effects()
    assert sorted(effects[3:5]) == ["unnote", "unship"], effects
    assert sorted(effects[5:]) == ["note", "ship"], effects
    assert "unquote" not in effects and effects.count("quote") == 1
    gone = sorted(label(e) for e in rig.app.journal(h.id) if e.invalidated)
    assert gone == sorted(["0/mint", "0#1/ship", "1#1/note", "0#1/compensate:ship", "1#1/compensate:note"]), gone


@pytest.mark.parametrize("how", ["await", "gather"])
async def test_a_branch_that_awaited_the_mints_branch_is_rolled_back_from_that_await(rig: Rig, how: str) -> None:
    """Two branches opened together: the mint's, and a shipment that first books a slot
    (before it has the mint), then awaits the mint's branch task and ships with its
    receipt.  After a reorg of the mint: the shipment is undone and redone, the booking,
    made before the await, is kept -- as is a third branch that never awaited the mint."""

    @rig.app.workflow("awaits_the_mint")
    async def awaits_the_mint(ctx: cf.Context, ev: dict[str, Any]) -> str:
        async def mint() -> str:
            r = await ctx.submit("mint", chain=CHAIN, tx=rig.mint(4), idempotency_key=ev["id"],
                                 finality=cf.Confirmations(2))
            return r.tx_hash

        async def step(name: str, arg: str) -> str:
            return await ctx.step(name, _effect(rig, name), arg, compensate=_effect(rig, f"un{name}"))

        minting = ctx.branch("mint", mint())

        async def shipment() -> str:
            await step("book", "slot")
            tx = await minting if ev["how"] == "await" else (await asyncio.gather(minting))[0]
            return await step("ship", tx)

        shipped, quoted = await ctx.gather(shipment(), step("quote", "q"), names=["ship", "quote"])
        return f"{await minting}|{shipped}|{quoted}"

    async with rig.worker():
        await rig.step()
        h = await rig.app.astart("awaits_the_mint", {"id": "awaited", "how": how})
        await rig.drive(lambda: rig.app.status(h.id).done, what="the first completion")
        assert sorted(rig.effects()) == ["book", "quote", "ship"]
        await rig.step()
        reorg(rig.net, rig.head() - int(rig.sub("awaited").block_number) + 2)
        await rig.step()
        await rig.drive(lambda: rig.effects().count("ship") == 2 and rig.app.status(h.id).done,
                        what="the shipment redone")
    st = await rig.status(h.id)
    assert st.status == "completed", st.error
    effects = rig.effects()
    assert effects[3:] == ["unship", "ship"], effects
    assert effects.count("book") == 1 and effects.count("quote") == 1
    gone = sorted(label(e) for e in rig.app.journal(h.id) if e.invalidated)
    assert gone == sorted(["mint/mint", "ship/ship", "ship/compensate:ship"]), gone
