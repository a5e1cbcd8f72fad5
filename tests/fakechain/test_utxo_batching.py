"""Batched payouts through the real engine on the in-memory UTXO chain, SQLite and
Postgres: many intents share one transaction, each keeps its key and its own receipt
(its output), a batch never changes once recorded, and fee budgets end in an
alertable stuck state rather than a failure.  What is asserted is read from the chain
and the tables."""

from __future__ import annotations

import asyncio
import json
import sys
import types
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow import metrics
from chainflow.chain import chainstore
from chainflow.chain.adapter import TxRejected
from chainflow.storage.schema import runs, submissions
from chainflow.storage.store import dead_letter
from chainflow.testing import CallLog, FakeTx, FakeUtxoAdapter, FakeUtxoChain

from ..engine._util import running_worker, wait_until
from .test_utxo_protocol import CHAIN, PAYEE, Rig, _share


def batching_rig(db_url: str, ledger: CallLog, chain: FakeUtxoChain | None = None, **tracker: Any) -> Rig:
    tracker.setdefault("batching", {CHAIN: cf.Batching(window=0.3, max_size=10)})
    rig = Rig(db_url, ledger, chain, **tracker)
    rig.chain.fund("wallet", 500_000)
    return rig


@pytest.fixture
def brig(db_url: str, ledger: CallLog) -> Any:
    rig = batching_rig(db_url, ledger)
    yield rig
    rig.close()


@pytest.fixture
def pairs(db_url: str, ledger: CallLog) -> Any:
    """A rig whose batches form only once two payouts are queued (an hour's window), so
    a payout stays queued, however slow the machine, until the test queues a second.
    The policy goes in at construction: the tracker's batcher takes it then, and a
    later change to ``rig.config.batching`` never reaches it."""
    rig = batching_rig(db_url, ledger, batching={CHAIN: cf.Batching(window=3600, max_size=2)})
    yield rig
    rig.close()


def batches(rig: Rig) -> list[Any]:
    with rig.app.engine.begin() as conn:
        return list(conn.execute(sa.select(submissions).where(submissions.c.batch_id == submissions.c.id)
                                 .order_by(submissions.c.id)))


async def test_payouts_in_one_window_share_one_transaction(brig: Rig) -> None:
    """Five payouts within the window: one batch transaction, one output each in the
    order the intents were queued, then change; each run completes with the batch's tx
    and its own output index; the batch's coins end recorded as spent, none held."""
    amounts = [11_000, 12_000, 13_000, 14_000, 15_000]
    async with running_worker(brig.app, track=False):
        await brig.step()
        handles = [await brig.app.astart("pay_flow", {"id": f"k{i}", "sats": sats}) for i, sats in enumerate(amounts)]
        # without a tracker step, whose batcher would form a batch of those queued so far
        await wait_until(lambda: all(brig.state(f"k{i}") == "queued" for i in range(5)), 20, what="all five queued")
        await brig.drive(lambda: all(brig.app.status(h.id).done for h in handles), what="all five paid")
    (batch,) = batches(brig)
    (attempt,) = brig.attempts(batch.id)
    tx = FakeTx.parse(attempt.raw)
    members = [brig.sub(f"k{i}") for i in range(5)]
    assert [m.batch_id for m in members] == [batch.id] * 5
    # Queue order is the order the runs reached their payment step, which runs started
    # one after another on a busy worker do not fix: the intents' ids record it.
    queued = sorted(range(5), key=lambda i: members[i].id)
    assert [list(o) for o in tx.outputs[:5]] == [[PAYEE, amounts[i]] for i in queued]
    assert tx.outputs[5][0] == "wallet" and len(tx.outputs) == 6, "one change output, last"
    for i, (h, m) in enumerate(zip(handles, members, strict=True)):
        st = brig.app.status(h.id)
        assert st.status == "completed", st.error
        assert st.output["tx"] == attempt.tx_hash == m.tx_hash
        assert json.loads(m.receipt)["extra"]["output_index"] == queued.index(i)
        assert m.state == "final" and brig.reserved(m.id) == [], "the batch, not its members, owns the coins"
    assert brig.chain.location(attempt.tx_hash) is not None
    assert sorted(v for _, v in brig.chain.payments(PAYEE)) == amounts, "each key paid exactly once"
    assert brig.reserved(batch.id) == sorted(tx.inputs) and brig.held(batch.id) == []


async def test_a_batch_is_immutable_and_its_bumps_keep_every_payout(db_url: str, ledger: CallLog) -> None:
    """Nothing below a fee of 2000 is mined: the first batch is bumped (fees 500 ->
    1000 -> 2000).  Payouts that arrive after it was recorded go into a second batch,
    never into a replacement of the first; every version of the first batch pays the
    same members over the same inputs; each key is paid once."""
    rig = batching_rig(db_url, ledger, FakeUtxoChain(min_mining_fee=2000), bump_blocks=1, bump_factor=2.0)
    rig.chain.fund("wallet", 300_000)
    try:
        async with running_worker(rig.app, track=False):
            await rig.step()
            first = [await rig.app.astart("pay_flow", {"id": f"a{i}", "sats": 20_000 + i}) for i in range(3)]
            await rig.drive(lambda: len(batches(rig)) == 1 and rig.state("a2") == "broadcast", mine=False,
                            what="the first batch")
            rig.chain.mine()
            await rig.step()
            late = [await rig.app.astart("pay_flow", {"id": f"b{i}", "sats": 30_000 + i}) for i in range(2)]
            await rig.drive(lambda: all(rig.app.status(h.id).done for h in first + late), what="everything paid")
        one, two = batches(rig)
        assert [rig.sub(f"a{i}").batch_id for i in range(3)] == [one.id] * 3
        assert [rig.sub(f"b{i}").batch_id for i in range(2)] == [two.id] * 2
        versions = rig.attempts(one.id)
        assert len(versions) >= 2, "the first batch was bumped"
        queued = sorted(range(3), key=lambda i: rig.sub(f"a{i}").id)  # outputs follow queue order
        for a in versions:
            tx = FakeTx.parse(a.raw)
            assert [list(o) for o in tx.outputs[:3]] == [[PAYEE, 20_000 + i] for i in queued]
            assert sorted(tx.inputs) == rig.reserved(one.id)
        assert not set(rig.reserved(one.id)) & set(rig.reserved(two.id))
        paid = sorted(v for _, v in rig.chain.payments(PAYEE))
        assert paid == [20_000, 20_001, 20_002, 30_000, 30_001], "each key paid exactly once"
    finally:
        rig.close()


async def test_a_payout_no_coins_can_fund_fails_alone(brig: Rig) -> None:
    """One queued payout asks more than the wallet holds: it fails with the adapter's
    insufficient-funds message, nothing reserved for it; the others are batched."""
    async with running_worker(brig.app, track=False):
        await brig.step()
        ok = [await brig.app.astart("pay_flow", {"id": f"ok{i}", "sats": 10_000}) for i in range(2)]
        big = await brig.app.astart("pay_flow", {"id": "big", "sats": 10_000_000})
        await brig.drive(lambda: all(brig.app.status(h.id).done for h in [*ok, big]), what="all settled")
    st = brig.app.status(big.id)
    assert st.status == "failed" and st.error is not None and "insufficient funds" in st.error["message"]
    assert brig.sub("big").batch_id is None and brig.sub("big").state == "failed"
    assert [brig.app.status(h.id).status for h in ok] == ["completed", "completed"]
    assert sorted(v for _, v in brig.chain.payments(PAYEE)) == [10_000, 10_000]


async def _queue(rig: Rig, key: str, sats: int) -> Any:
    """Start a payout and wait until it is queued and its batch window has passed."""
    handle = await rig.app.astart("pay_flow", {"id": key, "sats": sats})
    await wait_until(lambda: rig.state(key) == "queued", 20, what=f"{key} queued")
    await asyncio.sleep(0.4)  # the window (0.3 s) passes: the next tracker step batches it
    return handle


async def test_a_crash_while_failing_an_unsignable_batch_loses_neither_its_coins_nor_its_payout(
        brig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose signing fails for good is failed and its coins released in one
    transaction.  The two used to be separate: a crash between them left the batch
    ``allocated`` over no coin, and every later tracker step tried to sign it again,
    failed, and sent no later batch.  Now the crash undoes both: the batch is still
    allocated on its coins, is signed once signing works, and it and a later payout
    are each paid once."""
    brig.chain.fund("wallet", 500_000)  # one coin for each batch
    async with running_worker(brig.app, track=False):
        await brig.step()
        doomed = await _queue(brig, "k0", 10_000)

        async def refuse(*args: Any, **kwargs: Any) -> Any:
            raise TxRejected("a reserved input vanished", reverted=False)

        def killed(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("process killed while failing the batch")

        with monkeypatch.context() as m:
            m.setattr(brig.adapter, "sign", refuse)
            m.setattr(chainstore, "mark_failed", killed)
            await brig.step()
        (batch,) = batches(brig)
        assert batch.state == "allocated" and brig.reserved(batch.id) != [], "all or nothing"
        later = await _queue(brig, "k1", 12_000)
        await brig.drive(lambda: brig.app.status(later.id).done and brig.app.status(doomed.id).done,
                         what="both settled")
    assert [brig.app.status(h.id).status for h in (doomed, later)] == ["completed", "completed"]
    assert sorted(v for _, v in brig.chain.payments(PAYEE)) == [10_000, 12_000]


async def test_a_batch_that_cannot_be_sent_does_not_hold_back_later_batches(
        brig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Signing k0's batch keeps failing with an error the protocol does not know (a
    bug, a corrupt row): it used to end each tracker step before any later batch was
    sent.  Now it is logged and retried each step while k1's batch is sent and paid."""
    brig.chain.fund("wallet", 500_000)  # one coin for each batch
    sign = brig.adapter.sign

    async def broken_for_k0(request: dict[str, Any], domain: Any, fees: dict[str, int] | None) -> Any:
        if [PAYEE, 10_000] in request["outputs"]:
            raise RuntimeError("cannot sign this batch")
        return await sign(request, domain, fees)

    monkeypatch.setattr(brig.adapter, "sign", broken_for_k0)
    async with running_worker(brig.app, track=False):
        await brig.step()
        doomed = await _queue(brig, "k0", 10_000)
        await brig.step()
        later = await _queue(brig, "k1", 12_000)
        await brig.drive(lambda: brig.app.status(later.id).done, what="k1 paid")
        assert brig.app.status(later.id).status == "completed"
        stuck, sent = batches(brig)
        assert stuck.state == "allocated" and brig.sub("k0").batch_id == stuck.id and sent.state == "final"
        assert brig.app.status(doomed.id).status == "waiting"
    assert [v for _, v in brig.chain.payments(PAYEE)] == [12_000]
    assert any("could not send batch" in r.getMessage() and r.name == "chainflow.batcher" for r in caplog.records)


async def test_a_run_cancelled_while_queued_is_never_paid(pairs: Rig) -> None:
    """Cancelled before its batch formed (a long window): its intent fails, nothing is
    reserved or signed for it, nothing is refunded, and a later batch does not pay it."""
    async with running_worker(pairs.app, track=False):
        await pairs.step()
        h = await pairs.app.astart("pay_flow", {"id": "gone", "sats": 10_000})
        await pairs.drive(lambda: pairs.state("gone") == "queued", mine=False, what="queued")
        await pairs.app.acancel(h.id)
        await pairs.drive(lambda: pairs.app.status(h.id).done, mine=False, what="the cancellation")
        await pairs.drive(lambda: pairs.state("gone") == "failed", mine=False, what="the queued intent dropped")
        others = [await pairs.app.astart("pay_flow", {"id": f"o{i}", "sats": 12_000}) for i in range(2)]
        await pairs.drive(lambda: all(pairs.app.status(o.id).done for o in others), what="the next batch (full)")
    assert pairs.app.status(h.id).status == "cancelled"
    # withdrawn by its own run, which compensates its steps: a payout never paid has no refund
    assert "its run was stopped before the payout was batched" in pairs.sub("gone").error
    assert not [line for line in pairs.ledger.lines() if line.startswith("refund")]
    assert sorted(v for _, v in pairs.chain.payments(PAYEE)) == [12_000, 12_000]


async def test_a_queued_payout_another_run_waits_on_is_paid_after_its_opener_was_cancelled(pairs: Rig) -> None:
    """The run that queued a payout is cancelled while a second run, sharing its key,
    waits on it: the payout is the second run's too, so it is neither withdrawn by the
    cancel nor failed by the batcher; the next batch pays it once, the second run
    completes with it, and the cancelled run refunds nothing."""
    async with running_worker(pairs.app, track=False):
        await pairs.step()
        opener, sharer = await _share(pairs, "both", "queued")
        await pairs.app.acancel(opener.id)
        await pairs.drive(lambda: pairs.app.status(opener.id).done, mine=False, what="the cancellation")
        await pairs.step()  # the batcher sees the opener's run ended
        assert pairs.state("both") == "queued" and batches(pairs) == [], "kept for the sharer, and not batched alone"
        other = await pairs.app.astart("pay_flow", {"id": "other", "sats": 12_000})  # fills the batch
        await pairs.drive(lambda: pairs.app.status(sharer.id).done and pairs.app.status(other.id).done,
                          what="the batch")
    assert pairs.app.status(opener.id).status == "cancelled"
    st = pairs.app.status(sharer.id)
    assert st.status == "completed", st.error
    assert pairs.sub("both").state == "final" and st.output["tx"] == pairs.sub("both").tx_hash
    assert sorted(v for _, v in pairs.chain.payments(PAYEE)) == [10_000, 12_000]
    assert not [line for line in pairs.ledger.lines() if line.startswith("refund")]


async def test_a_run_dead_lettered_while_queued_pays_once_retried(pairs: Rig) -> None:
    """Dead-lettered (its executions kept crashing) while its payout waits for a batch:
    an operator may retry it, so the payout, holding nothing, waits unbatched instead of
    failing for good; retried, the run pays once in the next batch."""
    async with running_worker(pairs.app, track=False):
        await pairs.step()
        h = await pairs.app.astart("pay_flow", {"id": "dl", "sats": 10_000})
        await pairs.drive(lambda: pairs.state("dl") == "queued", mine=False, what="queued")
        with pairs.app.engine.begin() as conn:  # what the worker writes when it gives up on a run
            run = conn.execute(sa.select(runs.c.fence).where(runs.c.id == h.id)).one()
            assert dead_letter(conn, h.id, run.fence, 3, '{"message": "crashed"}', pairs.app.clock.time())
        others = [await pairs.app.astart("pay_flow", {"id": f"o{i}", "sats": 12_000}) for i in range(2)]
        await pairs.drive(lambda: all(pairs.app.status(o.id).done for o in others), what="a batch without it")
        assert pairs.state("dl") == "queued" and pairs.app.status(h.id).status == "dead_lettered"
        await pairs.app.aretry(h.id)
        last = await pairs.app.astart("pay_flow", {"id": "o2", "sats": 12_000})  # fills the next batch
        await pairs.drive(lambda: pairs.app.status(h.id).done and pairs.app.status(last.id).done,
                          what="the retried run")
    assert pairs.app.status(h.id).status == "completed"
    assert sorted(v for _, v in pairs.chain.payments(PAYEE)) == [10_000, 12_000, 12_000, 12_000]


async def test_a_deep_reorg_of_a_batch_rolls_back_each_member_and_pays_once(brig: Rig) -> None:
    """Both members complete on Confirmations(2); the batch's block is orphaned and the
    node forgets the tx: both runs are rolled back (their dependents compensated), the
    same batch bytes confirm again, each key paid once."""
    async with running_worker(brig.app, track=False):
        await brig.step()
        hs = [await brig.app.astart("pay_flow", {"id": f"r{i}", "sats": 21_000 + i}) for i in range(2)]
        await brig.drive(lambda: all(brig.app.status(h.id).status == "completed" for h in hs), what="completion")
        (batch,) = batches(brig)
        (attempt,) = brig.attempts(batch.id)
        batch = brig.sub(batch.idempotency_key)
        await brig.step()
        depth = brig.chain.height - int(batch.block_number) + 2
        brig.chain.reorg(depth, drop_txs=True)
        assert (await brig.step()).reorg_depth == depth
        assert brig.held(batch.id) == brig.reserved(batch.id), "the un-finalised batch holds its coins again"
        await brig.drive(lambda: all(brig.app.status(h.id).status == "completed" for h in hs)
                         and brig.sub(batch.idempotency_key).state == "final", what="re-completion")
    assert brig.effects().count("debit") == 2, "each member's dependent step compensated"
    assert len(brig.attempts(batch.id)) == 1 and brig.sub(batch.idempotency_key).tx_hash == attempt.tx_hash
    assert sorted(v for _, v in brig.chain.payments(PAYEE)) == [21_000, 21_001]
    assert brig.held(batch.id) == []


async def test_an_exhausted_fee_budget_flags_the_payment_stuck(db_url: str, ledger: CallLog) -> None:
    """No block takes a fee under 10,000 and the budget is 1,000: the payment is bumped
    to its budget, then flagged stuck once (alertable: a metric and the row), never
    failed; when the market comes back down it confirms and the flag is cleared."""
    chain = FakeUtxoChain(min_mining_fee=10_000)
    rig = Rig(db_url, ledger, chain, bump_blocks=1, bump_factor=2.0)
    rig.adapter.fee_budget = 1_000
    rig.chain.fund("wallet", 100_000)
    before = metrics.REGISTRY.get_sample_value("chainflow_submissions_stuck_total", {"chain": CHAIN}) or 0.0
    try:
        async with running_worker(rig.app, track=False):
            await rig.step()
            h = await rig.app.astart("pay_flow", {"id": "s", "sats": 30_000})
            await rig.drive(lambda: rig.state("s") == "broadcast", mine=False, what="broadcast")
            await rig.drive(lambda: rig.sub("s").stuck_since is not None, what="the stuck flag", timeout=30)
            for _ in range(3):
                chain.mine()
                await rig.step()
            assert not rig.app.status(h.id).done and rig.sub("s").state == "broadcast"
            fees = [json.loads(a.fees)["fee"] for a in rig.attempts(rig.sub("s").id)]
            assert fees == [500, 1_000], "bumped up to the budget, never past it"
            after = metrics.REGISTRY.get_sample_value("chainflow_submissions_stuck_total", {"chain": CHAIN})
            assert after == before + 1, "flagged once"
            chain.min_mining_fee = 0
            await rig.until_done(h.id, what="completion once the market eased")
        assert rig.app.status(h.id).status == "completed"
        assert rig.sub("s").stuck_since is None
    finally:
        rig.close()


def test_batching_names_a_chain_that_can_batch(db_url: str) -> None:
    """Refused at startup, naming the chain: batching for an unknown chain, or for an
    adapter without BatchBuilder."""
    chain = FakeUtxoChain()

    class NoBatching(FakeUtxoAdapter):
        merge = None  # type: ignore[assignment]

    with pytest.raises(cf.ConfigurationError, match="'nope', which is not configured"):
        cf.Chainflow(db_url, chains=[FakeUtxoAdapter(CHAIN, chain)],
                     tracker=cf.TrackerConfig(batching={"nope": cf.Batching()}))
    with pytest.raises(cf.ConfigurationError, match="cannot batch"):
        cf.Chainflow(db_url, chains=[NoBatching(CHAIN, chain)],
                     tracker=cf.TrackerConfig(batching={CHAIN: cf.Batching()}))
    with pytest.raises(ValueError, match="max_size"):
        cf.Batching(max_size=0)


def test_coins_command_shows_reservations_owners_and_spendable(db_url: str, ledger: CallLog,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``chainflow coins`` with a batch in flight (mining paused): the batch's reserved
    coin with its owner, the wallet's coins on chain, and what is left to spend."""
    from click.testing import CliRunner

    from chainflow.cli import cli

    rig = batching_rig(db_url, ledger)
    rig.chain.fund("wallet", 70_000)

    async def in_flight() -> None:
        async with running_worker(rig.app, track=False):
            await rig.step()
            await rig.app.astart("pay_flow", {"id": "c1", "sats": 10_000})
            await rig.drive(lambda: rig.state("c1") == "broadcast", mine=False, what="the batch sent")

    try:
        asyncio.run(in_flight())
        (batch,) = batches(rig)
        (outpoint,) = rig.held(batch.id)
        module = types.ModuleType("cf_coins_app")
        module.app = rig.app  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "cf_coins_app", module)
        res = CliRunner().invoke(cli, ["--app", "cf_coins_app:app", "coins"], catch_exceptions=False,
                                 env={"COLUMNS": "250"})
    finally:
        rig.close()
    assert res.exit_code == 0, res.output
    assert outpoint in res.output and batch.idempotency_key in res.output and "(batch)" in res.output
    # two coins on chain (500,000 and 70,000); the larger one is held by the batch
    assert "570000" in res.output and "500000" in res.output and "70000" in res.output
