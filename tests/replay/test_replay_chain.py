"""Replay and fork of on-chain payment runs recorded against anvil (SQLite and Postgres).

"Nothing was sent" is checked on the chain (the minter's transaction count, pending
included, and the head) and in the database (every table dumped before and after),
not by asking chainflow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import chainflow as cf
from chainflow.replay.replayer import Override
from chainflow.replay.report import Change
from devnet import reorg

from ..conftest import CallLog, require_anvil
from ..reorg._rig import CHAIN, Rig, build_rig, register_mint_flow
from .test_replay import dump


@pytest.fixture
def node_kind() -> str:
    """Anvil only: the simulation at a past block is what these tests show."""
    require_anvil()
    return "anvil"


@pytest.fixture
async def rig(net: Any, db_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    r = build_rig(net, db_url, CallLog(tmp_path / "ledger.log"))
    try:
        yield r
    finally:
        await r.close()


def credit(tx_hash: str, tokens: int) -> dict[str, Any]:
    return {"tx": tx_hash, "credited": tokens * 10**18, "fee": 0}


def credit_with_fee(tx_hash: str, tokens: int) -> dict[str, Any]:
    gross = tokens * 10**18
    return {"tx": tx_hash, "credited": gross - gross // 100, "fee": gross // 100}


def broken_credit(tx_hash: str, tokens: int) -> dict[str, Any]:
    raise RuntimeError("ledger rejected the posting")


def payment_flow(rig: Rig, *, tokens: int = 5, screen: bool = False, ledger: Any = credit) -> Any:
    async def payment(ctx: cf.Context, ev: dict[str, Any]) -> dict[str, Any]:
        await ctx.step("reserve", lambda order: order, ev["id"])
        if screen:
            await ctx.step("screen", lambda order: f"screened {order}", ev["id"])
        receipt = await ctx.submit("mint", chain=CHAIN, tx=rig.mint(tokens), idempotency_key=ev["id"],
                                   finality=cf.Confirmations(1))
        posted = await ctx.step("credit-ledger", ledger, receipt.tx_hash, tokens)
        return {"tx": receipt.tx_hash, "posted": posted}

    return payment


async def record(rig: Rig, flow: Any, order: str = "order-1") -> str:
    rig.app.workflow("payment")(flow)
    async with rig.worker():
        await rig.step()
        run_id = (await rig.app.astart("payment", {"id": order})).id
        await rig.drive(lambda: rig.app.status(run_id).done, what="the run to finish")
    return run_id


def sent(rig: Rig) -> tuple[int, int]:
    """The minter's transaction count (pending included) and the head: what any
    broadcast would move."""
    return int(rig.w3.eth.get_transaction_count(rig.minter.address, "pending")), rig.head()


async def test_fee_override_changes_only_the_ledger_step_and_nothing_is_sent(rig: Rig) -> None:
    run_id = await record(rig, payment_flow(rig))
    assert rig.app.status(run_id).status == "completed"
    chain_before, tables_before, live_before = sent(rig), dump(rig.app), rig.app.status(run_id)

    report = await rig.app.areplay(run_id, overrides={"credit-ledger": Override(credit_with_fee, pure=True)})

    assert [(s.label, s.change) for s in report.steps] == [
        ("reserve", Change.UNCHANGED), ("mint", Change.UNCHANGED), ("credit-ledger", Change.OUTPUT_CHANGED)]
    diff = {d.path: (d.recorded, d.replayed) for d in report.step("credit-ledger").diff}
    assert diff == {".credited": (5 * 10**18, 5 * 10**18 - 5 * 10**16), ".fee": (0, 5 * 10**16)}
    assert sent(rig) == chain_before
    assert dump(rig.app) == tables_before
    assert rig.app.status(run_id) == live_before


async def test_inserted_step_diverges_and_changed_amount_is_decoded_and_simulated(rig: Rig) -> None:
    run_id = await record(rig, payment_flow(rig))
    sub = rig.sub("order-1")
    chain_before, tables_before = sent(rig), dump(rig.app)

    screened = await rig.app.areplay(run_id, workflow=payment_flow(rig, screen=True))
    assert screened.divergence is not None and "history holds submit 'mint'" in screened.divergence
    assert screened.step("screen").change == Change.DIVERGENCE
    assert screened.replayed_status == "halted" and screened.step("mint").change == Change.NOT_REACHED
    assert sent(rig) == chain_before

    more = await rig.app.areplay(run_id, workflow=payment_flow(rig, tokens=7))
    mint = more.step("mint")
    assert mint.change == Change.TX_CHANGED and mint.tx is not None
    assert mint.tx.recorded is not None
    assert (mint.tx.recorded["function"], mint.tx.recorded["args"]["_amount"]) == ("mint", 5)
    assert (mint.tx.replayed["function"], mint.tx.replayed["args"]["_amount"]) == ("mint", 7)
    assert mint.tx.replayed["args"]["_to"] == rig.minter.address
    assert mint.tx.recorded_key == mint.tx.replayed_key == "order-1"
    assert mint.tx.simulation is not None and mint.tx.not_simulated is None
    assert mint.tx.simulation["block_number"] == int(sub.block_number) - 1
    assert mint.tx.simulation["succeeded"] is True
    # the workflow got the recorded receipt: the later step ran on the recorded tx hash
    assert more.step("credit-ledger").change == Change.UNCHANGED
    assert sent(rig) == chain_before and dump(rig.app) == tables_before


async def test_reorged_run_replays_faithfully(rig: Rig) -> None:
    register_mint_flow(rig, cf.Confirmations(2), name="payment")
    async with rig.worker():
        await rig.step()
        run_id = (await rig.app.astart("payment", {"id": "order-1"})).id
        await rig.drive(lambda: rig.app.status(run_id).done, what="the first completion")
        block = int(rig.sub("order-1").block_number)
        await rig.step()
        reorg(rig.net, rig.head() - block + 2)
        await rig.step()
        await rig.drive(lambda: rig.app.status(run_id).status == "completed", what="the re-completion")
    assert any(e.invalidated for e in rig.app.journal(run_id)), "the reorg must have invalidated entries"
    effects, chain_before, tables_before = rig.ledger.lines(), sent(rig), dump(rig.app)

    report = await rig.app.areplay(run_id)

    assert not report.changed, report.to_json()
    assert report.replayed_status == "completed"
    assert sorted(i["step"] for i in report.invalidated) == sorted(
        ["mint", "credit", "notify", "compensate:notify", "compensate:credit"])
    assert all(i["reason"].startswith("reorg #") for i in report.invalidated)
    assert rig.ledger.lines() == effects and sent(rig) == chain_before and dump(rig.app) == tables_before


async def test_fork_of_failed_run_completes_without_resubmitting(rig: Rig) -> None:
    run_id = await record(rig, payment_flow(rig, ledger=broken_credit))
    assert rig.app.status(run_id).status == "failed"
    source_mint = next(e for e in rig.app.journal(run_id) if e.key == "mint")
    count, _ = sent(rig)

    # the fixed ledger code is a module-level function: the worker imports it by name
    fixed = rig.app.fork(run_id, from_failed=True, overrides={"credit-ledger": credit_with_fee})
    again = rig.app.fork(run_id, from_step="mint", overrides={"credit-ledger": credit_with_fee})
    async with rig.worker():
        await rig.drive(lambda: rig.app.status(fixed.id).done and rig.app.status(again.id).done,
                        what="both forks to finish", mine=False)
    for handle in (fixed, again):
        st = rig.app.status(handle.id)
        assert st.status == "completed", st.error
        assert st.output["tx"] == source_mint.output["tx_hash"]
        assert st.output["posted"]["fee"] == 5 * 10**16
    # no new transaction from the sender: the mint before the fork point was not
    # re-submitted, and the fork from the mint resolved to the source's submission
    assert sent(rig)[0] == count
    assert len(rig.subs()) == 1
