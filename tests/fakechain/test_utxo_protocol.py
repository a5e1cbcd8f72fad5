"""The whole submission protocol against the in-memory UTXO chain (chainflow.testing):
a non-EVM family through the real engine, its worker, tracker and reorg rollback, on
SQLite and Postgres (``db_url``).

The adapter implements ``CoinSource`` and no ``NonceSource``, so every intent's
conflict domain is a set of reserved outpoints.  The chain never mines by itself: the
test mines, and steps the tracker by hand, so each scenario's order is exact.  What is
asserted is read from the chain (payments, spends, mempool) and from the tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.chain.tracker import Tracker
from chainflow.storage.schema import reservations, runs, submissions, tx_attempts
from chainflow.testing import CallLog, FakeTx, FakeUtxoAdapter, FakeUtxoChain, pay

from ..engine._util import running_worker

CHAIN = "fakebtc"
PAYEE = "bc1payee"


class Rig:
    def __init__(self, db_url: str, ledger: CallLog, chain: FakeUtxoChain | None = None, **tracker: Any) -> None:
        self.db_url, self.ledger = db_url, ledger
        self.chain = chain or FakeUtxoChain()
        tracker.setdefault("rebroadcast_blocks", 1)
        tracker.setdefault("start_depth", 0)
        self.config = cf.TrackerConfig(poll_interval=0.05, **tracker)
        self.apps: list[cf.Chainflow] = []
        self.app, self.adapter = self.new_app()
        self.tracker = Tracker(self.app.database, self.app.clock, self.adapter, "test-tracker", self.config)

    def new_app(self, adapter: FakeUtxoAdapter | None = None) -> tuple[cf.Chainflow, FakeUtxoAdapter]:
        """An app over the same database and chain, as a restarted worker process has."""
        adapter = adapter or FakeUtxoAdapter(CHAIN, self.chain)
        app = cf.Chainflow(self.db_url, chains=[adapter], tracker=self.config, lease_seconds=1.0)
        app.ensure_schema()
        register_pay_flow(app, self.ledger, cf.Confirmations(2))
        self.apps.append(app)
        return app, adapter

    def close(self) -> None:
        for app in self.apps:
            app.engine.dispose()

    async def step(self) -> Any:
        return await self.tracker.step()

    async def until_done(self, run_id: str, *, what: str, mine: bool = True) -> None:
        """Drive the chain until the run has finished."""
        await self.drive(lambda: self.app.status(run_id).done, mine=mine, what=what)

    async def drive(self, done: Callable[[], bool], *, mine: bool = True, timeout: float = 20.0,
                    what: str = "condition") -> None:
        """Step the tracker (mining a block each round) until ``done()`` holds."""
        end = time.monotonic() + timeout
        while True:
            await self.step()
            for _ in range(10):
                if done():
                    return
                await asyncio.sleep(0.02)
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            if mine:
                self.chain.mine()

    def sub(self, key: str) -> Any:
        with self.app.engine.begin() as conn:
            return conn.execute(sa.select(submissions).where(submissions.c.idempotency_key == key)).one()

    def state(self, key: str) -> str | None:
        """The submission's state, None before the step recorded its intent."""
        with self.app.engine.begin() as conn:
            return conn.execute(sa.select(submissions.c.state)
                                .where(submissions.c.idempotency_key == key)).scalar()

    def attempts(self, sub_id: int) -> list[Any]:
        with self.app.engine.begin() as conn:
            return list(conn.execute(
                sa.select(tx_attempts).where(tx_attempts.c.submission_id == sub_id).order_by(tx_attempts.c.id)))

    def reserved(self, sub_id: int) -> list[str]:
        with self.app.engine.begin() as conn:
            return sorted(r.outpoint for r in conn.execute(
                sa.select(reservations.c.outpoint).where(reservations.c.submission_id == sub_id)))

    def held(self, sub_id: int) -> list[str]:
        """Reserved and not yet recorded as spent by the intent's own final transaction."""
        with self.app.engine.begin() as conn:
            return sorted(r.outpoint for r in conn.execute(
                sa.select(reservations.c.outpoint).where(reservations.c.submission_id == sub_id,
                                                         reservations.c.spent_at_block.is_(None))))

    def effects(self) -> list[str]:
        return [line.split()[0] for line in self.ledger.lines()]


def register_pay_flow(app: cf.Chainflow, ledger: CallLog, finality: Any) -> None:
    """reserve (compensated) -> pay (compensated) -> credit -> notify (compensated)."""

    def reserve(order: str) -> str:
        ledger.hit(f"reserve {order}")
        return order

    def unreserve(order: str) -> None:
        ledger.hit(f"unreserve {order}")

    def refund(receipt: cf.Receipt) -> None:
        ledger.hit(f"refund {receipt.tx_hash}")

    def credit(tx_hash: str) -> str:
        ledger.hit(f"credit {tx_hash}")
        return tx_hash

    def debit(tx_hash: str) -> None:
        ledger.hit(f"debit {tx_hash}")

    def notify(tx_hash: str) -> str:
        ledger.hit(f"notify {tx_hash}")
        return tx_hash

    def unnotify(tx_hash: str) -> None:
        ledger.hit(f"unnotify {tx_hash}")

    @app.workflow("pay_flow")
    async def flow(ctx: cf.Context, ev: dict[str, Any]) -> dict[str, Any]:
        await ctx.step("reserve", reserve, ev["id"], compensate=unreserve)
        r = await ctx.submit("pay", chain=CHAIN, tx=pay(PAYEE, ev["sats"]), idempotency_key=ev["id"],
                             finality=finality, compensate=refund)
        tx = await ctx.step("credit", credit, r.tx_hash, compensate=debit)
        await ctx.step("notify", notify, tx, compensate=unnotify)
        return {"tx": r.tx_hash, "block": r.block_number, "block_hash": r.block_hash, "fee": r.effective_fee,
                "position": r.position}


@pytest.fixture
def rig(db_url: str, ledger: CallLog) -> Any:
    r = Rig(db_url, ledger)
    r.chain.fund("wallet", 100_000)
    r.chain.fund("wallet", 40_000)
    yield r
    r.close()


def _paid(rig: Rig, sats: int) -> list[str]:
    return [txid for txid, value in rig.chain.payments(PAYEE) if value == sats]


async def _share(rig: Rig, key: str, state: str, sats: int = 10_000) -> tuple[Any, Any]:
    """Start a payment under ``key``, and once its intent is ``state`` a second run
    with the same key, which finds the intent and waits on it; both handles."""
    opener = await rig.app.astart("pay_flow", {"id": key, "sats": sats})
    await rig.drive(lambda: rig.state(key) == state, mine=False, what=f"the intent {state}")
    sharer = await rig.app.astart("pay_flow", {"id": key, "sats": sats})
    await rig.drive(lambda: rig.app.status(sharer.id).status == "waiting", mine=False, what="the sharer waits")
    return opener, sharer


async def test_a_payment_settles_once_on_reserved_coins(rig: Rig) -> None:
    async with running_worker(rig.app, track=False):
        await rig.step()
        h = await rig.app.astart("pay_flow", {"id": "order-1", "sats": 30_000})
        await rig.until_done(h.id, what="completion")
    st = rig.app.status(h.id)
    assert st.status == "completed", st.error
    sub = rig.sub("order-1")
    (attempt,) = rig.attempts(sub.id)
    assert (sub.state, sub.nonce, sub.tx_hash) == ("final", None, attempt.tx_hash)
    # the largest coin funds 30_000 + the fee budget; the reservation is the tx's inputs, kept
    tx = FakeTx.parse(attempt.raw)
    assert list(tx.inputs) == rig.reserved(sub.id) and len(tx.inputs) == 1
    assert rig.held(sub.id) == [], "a final intent's coins are recorded as spent, not held"
    assert rig.chain.output(tx.inputs[0]) == ("wallet", 100_000)
    assert _paid(rig, 30_000) == [attempt.tx_hash]
    assert st.output["tx"] == attempt.tx_hash and st.output["fee"] == 500 and st.output["position"] == 0
    receipt = json.loads(sub.receipt)
    assert receipt["family"] == "" and receipt["extra"]["inputs"] == list(tx.inputs)
    assert rig.effects() == ["reserve", "credit", "notify"]


async def test_a_second_run_sharing_the_key_completes_with_the_same_payment(rig: Rig) -> None:
    """A second run with the same key finds the first's intent and waits on it; the
    tracker wakes the run that opened the intent, so the second looks again every poll
    interval, and completes with the same receipt: one payment."""
    async with running_worker(rig.app, track=False):
        await rig.step()
        first, second = await _share(rig, "shared", "broadcast")
        await rig.until_done(first.id, what="the first run")
        await rig.drive(lambda: rig.app.status(second.id).done, mine=False, what="the second run", timeout=10)
    assert rig.app.status(first.id).status == rig.app.status(second.id).status == "completed"
    assert rig.app.status(second.id).output == rig.app.status(first.id).output
    assert len(_paid(rig, 10_000)) == 1


async def test_concurrent_intents_never_share_a_coin(rig: Rig) -> None:
    """Two payments at once: each gets its own coin; a third, more than the wallet's
    unreserved coins hold, fails with a clear error, reserving nothing."""
    async with running_worker(rig.app, track=False):
        await rig.step()
        a = await rig.app.astart("pay_flow", {"id": "a", "sats": 30_000})
        b = await rig.app.astart("pay_flow", {"id": "b", "sats": 20_000})
        await rig.drive(lambda: rig.app.status(a.id).done and rig.app.status(b.id).done, what="both")
        c = await rig.app.astart("pay_flow", {"id": "c", "sats": 200_000})
        await rig.drive(lambda: rig.app.status(c.id).done, mine=False, what="the third")
    assert rig.app.status(a.id).status == rig.app.status(b.id).status == "completed"
    ra, rb = rig.reserved(rig.sub("a").id), rig.reserved(rig.sub("b").id)
    assert ra and rb and not set(ra) & set(rb)
    st = rig.app.status(c.id)
    assert st.status == "failed" and st.error is not None and "insufficient funds" in st.error["message"]
    assert rig.sub("c").state == "intent" and rig.reserved(rig.sub("c").id) == []


class CrashingAdapter(FakeUtxoAdapter):
    """Hangs for good at one protocol phase, so the test can kill the worker there:
    ``allocated`` (coins reserved, nothing signed), ``signed`` (bytes committed, nothing
    sent), ``broadcast`` (the node took the bytes, the answer never came back)."""

    def __init__(self, chain: FakeUtxoChain, phase: str) -> None:
        super().__init__(CHAIN, chain)
        self.phase = phase
        self.reached = asyncio.Event()

    async def _hang(self) -> None:
        self.reached.set()
        await asyncio.Event().wait()

    async def sign(self, request: dict[str, Any], domain: Any, fees: dict[str, int] | None) -> Any:
        if self.phase == "allocated":
            await self._hang()
        return await super().sign(request, domain, fees)

    async def broadcast(self, raw: bytes) -> Any:
        if self.phase == "broadcast":
            self.chain.submit(raw)
        if self.phase in ("signed", "broadcast"):
            await self._hang()
        return await super().broadcast(raw)


@pytest.mark.parametrize("phase", ["allocated", "signed", "broadcast"])
async def test_a_worker_killed_mid_protocol_is_resumed_with_the_same_bytes(rig: Rig, phase: str) -> None:
    """The first worker dies at ``phase`` (its task is cancelled mid-call, its lease
    left to expire); a second app over the same database and chain resumes the run:
    same reserved coins, same signed bytes re-broadcast, one payment on chain."""
    crashing = CrashingAdapter(rig.chain, phase)
    first, _ = rig.new_app(crashing)
    stop = asyncio.Event()
    task = asyncio.create_task(first.worker(track=False, poll_interval=0.02).run(stop))
    await rig.step()
    h = await first.astart("pay_flow", {"id": "order-1", "sats": 30_000})
    await asyncio.wait_for(crashing.reached.wait(), 10)
    sub = rig.sub("order-1")
    held = rig.reserved(sub.id)
    attempts = rig.attempts(sub.id)
    assert held and sub.state == {"allocated": "allocated", "signed": "signed", "broadcast": "signed"}[phase]
    assert len(attempts) == (0 if phase == "allocated" else 1)
    task.cancel()  # the process dies: no clean shutdown of the hung call
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(task, 10)

    async with running_worker(rig.app, track=False):
        await rig.until_done(h.id, what="the resumed run")
    st = rig.app.status(h.id)
    assert st.status == "completed", st.error
    sub = rig.sub("order-1")
    (attempt,) = rig.attempts(sub.id)
    if attempts:
        assert attempt.tx_hash == attempts[0].tx_hash and attempt.raw == attempts[0].raw
    assert rig.reserved(sub.id) == held == list(FakeTx.parse(attempt.raw).inputs)
    assert _paid(rig, 30_000) == [attempt.tx_hash], "exactly one payment on chain"
    sent = [raw for raw in rig.chain.broadcasts if FakeTx.parse(raw).signer == "wallet"]
    assert set(sent) == {attempt.raw}, "only the one signed version was ever broadcast"
    if phase == "broadcast":
        assert len(sent) >= 2, "the restart re-broadcast the bytes the node already had"
    assert rig.effects() == ["reserve", "credit", "notify"]


async def test_a_foreign_spend_of_a_reserved_coin_fails_the_intent(rig: Rig) -> None:
    """Mining paused; another key spends our reserved input and that spend is mined: the
    step fails naming the outpoint and the spender, compensations run, our tx is in no
    block, and the coin stays reserved by the dead intent until the foreign spend is as
    final as the payout asked (2 confirmations): a reorg could still drop it before."""
    async with running_worker(rig.app, track=False):
        await rig.step()
        h = await rig.app.astart("pay_flow", {"id": "order-1", "sats": 30_000})
        await rig.drive(lambda: rig.state("order-1") == "broadcast", mine=False, what="the broadcast")
        sub = rig.sub("order-1")
        (attempt,) = rig.attempts(sub.id)
        assert attempt.tx_hash in rig.chain.mempool
        (outpoint,) = rig.reserved(sub.id)
        thief = rig.chain.foreign_spend(outpoint)
        assert attempt.tx_hash not in rig.chain.mempool, "the mined conflict evicted ours"
        await rig.until_done(h.id, what="the failure")
    st = rig.app.status(h.id)
    assert st.status == "failed"
    assert st.error is not None
    assert "chainflow did not sign" in st.error["message"] and outpoint in st.error["message"]
    sub = rig.sub("order-1")
    assert sub.state == "failed" and thief in sub.error and outpoint in sub.error
    assert rig.chain.spender(outpoint) == thief and rig.chain.location(attempt.tx_hash) is None
    assert _paid(rig, 30_000) == []
    assert rig.effects() == ["reserve", "unreserve"], "the payment never happened: nothing to refund"
    found = rig.chain.location(thief)
    assert found is not None
    while rig.chain.height - found[0].number + 1 < 2:
        assert rig.reserved(sub.id) == [outpoint], "released before the foreign spend was final"
        rig.chain.mine()
        await rig.step()
    assert rig.reserved(sub.id) == [], "the foreign spend is final: the dead intent's coins are released"


async def test_a_stuck_payment_is_replaced_spending_all_the_same_inputs(db_url: str, ledger: CallLog) -> None:
    """Blocks keep coming but none takes a fee under 1000: the tracker bumps the fee
    (factor 2: 500 -> 1000); the replacement spends every input of the original, the
    original leaves the mempool, only the replacement confirms and completes the step."""
    rig = Rig(db_url, ledger, FakeUtxoChain(min_mining_fee=1000), bump_blocks=2, bump_factor=2.0)
    try:
        rig.chain.fund("wallet", 30_000)
        rig.chain.fund("wallet", 20_000)  # two coins needed: a multi-input intent
        async with running_worker(rig.app, track=False):
            await rig.step()
            h = await rig.app.astart("pay_flow", {"id": "order-1", "sats": 40_000})
            await rig.until_done(h.id, what="completion")
        st = rig.app.status(h.id)
        assert st.status == "completed", st.error
        sub = rig.sub("order-1")
        attempts = rig.attempts(sub.id)
        assert len(attempts) >= 2, "the stuck version was replaced"
        held = rig.reserved(sub.id)
        assert len(held) == 2
        fees = [json.loads(a.fees)["fee"] for a in attempts]
        assert fees == sorted(fees) and fees[0] == 500 and fees[-1] >= 1000
        for a in attempts:  # every version spends all the intent's inputs: they all conflict
            assert sorted(FakeTx.parse(a.raw).inputs) == held
        mined = [a.tx_hash for a in attempts if rig.chain.location(a.tx_hash) is not None]
        assert mined == [sub.tx_hash] == [st.output["tx"]] and sub.tx_hash == attempts[-1].tx_hash
        assert not any(a.tx_hash in rig.chain.mempool for a in attempts)
        assert _paid(rig, 40_000) == [sub.tx_hash] and st.output["fee"] == fees[-1]
    finally:
        rig.close()


async def _bumped_and_mined(rig: Rig) -> tuple[Any, Any, Any]:
    """Payment A (10_000) bumped (A1 -> A2) while blocks ask a fee of 1000, then A2
    mined: A's run handle and its two versions."""
    a = await rig.app.astart("pay_flow", {"id": "A", "sats": 10_000})
    await rig.drive(lambda: len(rig.attempts(rig.sub("A").id)) == 2 if rig.state("A") else False, what="A bumped")
    a1, a2 = rig.attempts(rig.sub("A").id)
    rig.chain.mine()  # A2 pays the 1000 a block asks: included
    return a, a1, a2


def _mine_instead(rig: Rig, a1: Any, a2: Any) -> None:
    """A reorg from A2's block whose fork mines A1 in its place."""
    found = rig.chain.location(a2.tx_hash)
    assert found is not None
    rig.chain.reorg(rig.chain.height - found[0].number + 1, new_blocks=0, drop_txs=True)
    rig.chain.min_mining_fee = 0
    rig.chain.submit(bytes(a1.raw))


async def test_a_payout_never_spends_the_change_of_a_payout_that_is_not_final(db_url: str, ledger: CallLog) -> None:
    """A is bumped (A1 -> A2) and A2 is included, one confirmation of the two A asks
    for.  B is offered the wallet's coins then: A2's change (the largest) used to be
    one of them, and a reorg that settles A with A1 instead made that outpoint never
    exist: B waited for ever with its coin reserved.  Now B takes the funded coin, and
    after the reorg A settles with A1 and B is paid, each once."""
    rig = Rig(db_url, ledger, FakeUtxoChain(min_mining_fee=1000), bump_blocks=1, bump_factor=2.0)
    try:
        rig.chain.fund("wallet", 30_000)  # A's: 10_000 + the 5_000 fee budget
        small = rig.chain.fund("wallet", 12_000)  # enough for B, less than A2's change
        async with running_worker(rig.app, track=False):
            await rig.step()
            a, a1, a2 = await _bumped_and_mined(rig)
            await rig.drive(lambda: rig.state("A") == "included", mine=False, what="A2 included")
            change = f"{a2.tx_hash}:1"
            assert rig.chain.output(change)[1] > 12_000, "A2's change is the largest coin"
            b = await rig.app.astart("pay_flow", {"id": "B", "sats": 5_000})
            await rig.drive(lambda: rig.state("B") == "broadcast", mine=False, what="B sent")
            assert rig.reserved(rig.sub("B").id) == [small]
            _mine_instead(rig, a1, a2)
            await rig.drive(lambda: rig.app.status(a.id).done and rig.app.status(b.id).done, what="both settled")
        assert [rig.app.status(h.id).status for h in (a, b)] == ["completed", "completed"]
        assert rig.sub("A").tx_hash == a1.tx_hash and _paid(rig, 10_000) == [a1.tx_hash]
        assert _paid(rig, 5_000) == [rig.sub("B").tx_hash]
    finally:
        rig.close()


async def test_a_payout_spending_change_a_reorg_past_finality_unmade_fails_and_frees_it(
        db_url: str, ledger: CallLog) -> None:
    """A is bumped (A1 -> A2), A2 is mined and A is final: B spends A2's change, the
    wallet's only coin.  A reorg past A's finality settles A with A1, so B's input can
    never exist.  B used to wait for ever; now its step fails naming the coin and A1,
    its run is compensated, and the coin's reservation goes once A1 is as final as B
    asked (two confirmations), not before."""
    rig = Rig(db_url, ledger, FakeUtxoChain(min_mining_fee=1000), bump_blocks=1, bump_factor=2.0)
    try:
        rig.chain.fund("wallet", 30_000)
        async with running_worker(rig.app, track=False):
            await rig.step()
            a, a1, a2 = await _bumped_and_mined(rig)
            await rig.until_done(a.id, what="A final")
            change = f"{a2.tx_hash}:1"
            b = await rig.app.astart("pay_flow", {"id": "B", "sats": 5_000})
            await rig.drive(lambda: rig.state("B") == "broadcast", mine=False, what="B sent")
            b_id = rig.sub("B").id
            assert rig.reserved(b_id) == [change], "A is final: its change is B's coin"
            _mine_instead(rig, a1, a2)
            await rig.drive(lambda: rig.app.status(a.id).done and rig.app.status(b.id).done, what="both settled")
            st = rig.app.status(b.id)
            assert st.status == "failed" and st.error is not None, st.status
            assert change in st.error["message"] and a1.tx_hash in st.error["message"], st.error
            mined = rig.chain.location(a1.tx_hash)
            assert mined is not None
            while rig.chain.height - mined[0].number + 1 < 2:
                assert rig.reserved(b_id) == [change], "released before A1 was as final as B asked"
                rig.chain.mine()
                await rig.step()
            assert rig.reserved(b_id) == []
    finally:
        rig.close()
    assert rig.app.status(a.id).status == "completed" and rig.sub("A").tx_hash == a1.tx_hash
    assert _paid(rig, 10_000) == [a1.tx_hash] and _paid(rig, 5_000) == []
    assert rig.app.status(b.id).compensations == {"reserve": "ok"}
    assert rig.sub("B").state == "failed" and rig.chain.conflicting(change) == a1.tx_hash


async def test_a_deep_reorg_rolls_back_every_run_sharing_the_payment(rig: Rig) -> None:
    """Two runs share one payment by its key; both complete on it.  A reorg from below
    its block un-finalises it: both runs are rolled back (each one's credit and notify
    undone newest first, then redone), not only the run that opened the intent, and
    both end with the payment's new block.  One payment, one signed version."""
    async with running_worker(rig.app, track=False):
        await rig.step()
        first, second = await _share(rig, "shared", "broadcast")
        await rig.drive(lambda: rig.app.status(first.id).done and rig.app.status(second.id).done, what="both runs")
        sub = rig.sub("shared")
        await rig.step()
        depth = rig.chain.height - int(sub.block_number) + 2
        rig.chain.reorg(depth, drop_txs=True)
        await rig.step()
        for h in (first, second):
            assert rig.app.status(h.id).status != "completed", "every sharing run is reopened for its rollback"
        await rig.drive(lambda: all(rig.app.status(h.id).status == "completed" for h in (first, second))
                        and rig.effects().count("credit") == 4, what="both re-completions")
    final = rig.sub("shared")
    assert final.block_hash != sub.block_hash and final.tx_hash == sub.tx_hash
    for h in (first, second):
        st = rig.app.status(h.id)
        assert st.output["block_hash"] == final.block_hash
        assert [e.key for e in rig.app.journal(h.id) if e.invalidated] == \
            ["pay", "credit", "notify", "compensate:notify", "compensate:credit"]
    assert sorted(rig.effects()) == sorted(["reserve"] * 2 + ["credit", "notify"] * 4 + ["unnotify", "debit"] * 2)
    assert len(rig.attempts(sub.id)) == 1 and len(_paid(rig, 10_000)) == 1


async def test_a_deep_reorg_after_finality_rolls_back_and_pays_once(rig: Rig) -> None:
    """Confirmations(2); the run completes; the chain is replaced from below the
    payment's block and the node forgets the tx (mempool lost).  The step is
    invalidated, its dependents compensated newest first, the same bytes re-broadcast
    and re-confirmed on the new chain: one payment, one signed version."""
    async with running_worker(rig.app, track=False):
        await rig.step()
        h = await rig.app.astart("pay_flow", {"id": "order-1", "sats": 30_000})
        await rig.until_done(h.id, what="the first completion")
        assert rig.app.status(h.id).status == "completed"
        sub = rig.sub("order-1")
        (attempt,) = rig.attempts(sub.id)
        old_block = sub.block_hash
        await rig.step()
        depth = rig.chain.height - int(sub.block_number) + 2
        orphaned = rig.chain.reorg(depth, drop_txs=True)
        assert old_block in orphaned and rig.chain.location(attempt.tx_hash) is None
        stats = await rig.step()
        assert stats.reorg_depth == depth
        assert rig.app.status(h.id).status != "completed", "the run is reopened for its rollback"
        await rig.drive(lambda: rig.app.status(h.id).status == "completed", what="the re-completion")
    st = rig.app.status(h.id)
    assert st.status == "completed", st.error
    assert rig.effects() == ["reserve", "credit", "notify", "unnotify", "debit", "credit", "notify"]
    (event,) = rig.app.reorgs()
    assert event.chain == CHAIN and event.depth == depth and event.affected_txs == [attempt.tx_hash]
    final = rig.sub("order-1")
    assert (final.id, final.state, final.tx_hash) == (sub.id, "final", attempt.tx_hash)
    assert final.block_hash != old_block and final.block_hash not in orphaned
    assert len(rig.attempts(sub.id)) == 1
    assert _paid(rig, 30_000) == [attempt.tx_hash], "paid once on the canonical chain"
    assert st.output["block_hash"] == final.block_hash


async def test_coins_of_an_intent_that_never_signed_are_released(rig: Rig) -> None:
    """The worker dies after reserving coins, before signing; the run is then cancelled.
    Nothing was ever signed, so the intent is provably dead: the tracker releases its
    coins (no gap to fill on a UTXO chain) and a later payment may spend them."""
    crashing = CrashingAdapter(rig.chain, "allocated")
    first, _ = rig.new_app(crashing)
    stop = asyncio.Event()
    task = asyncio.create_task(first.worker(track=False, poll_interval=0.02).run(stop))
    await rig.step()
    h = await first.astart("pay_flow", {"id": "order-1", "sats": 30_000})
    await asyncio.wait_for(crashing.reached.wait(), 10)
    held = rig.reserved(rig.sub("order-1").id)
    assert held
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await asyncio.wait_for(task, 10)
    await rig.app.acancel(h.id)
    async with running_worker(rig.app, track=False):
        await rig.until_done(h.id, mine=False, what="the cancellation")
        assert rig.app.status(h.id).status == "cancelled"
        await rig.drive(lambda: rig.state("order-1") == "failed", mine=False, what="the release")
        sub = rig.sub("order-1")
        assert "released" in sub.error and rig.reserved(sub.id) == [] and rig.attempts(sub.id) == []
        again = await rig.app.astart("pay_flow", {"id": "order-2", "sats": 30_000})
        await rig.drive(lambda: rig.app.status(again.id).done, what="the next payment")
    assert rig.app.status(again.id).status == "completed"
    assert rig.reserved(rig.sub("order-2").id) == held, "the released coin is the one selected again"
    assert len(_paid(rig, 30_000)) == 1


async def test_coins_of_an_intent_signed_since_it_read_as_orphaned_are_kept(rig: Rig) -> None:
    """The tracker reads an allocated intent of an ended run as orphaned; a run sharing
    its key signs and sends it before the tracker frees it.  Its coins are spent by a
    valid version now: freeing them must find the intent signed and leave them held."""
    async with running_worker(rig.app, track=False):
        await rig.step()
        await rig.app.astart("pay_flow", {"id": "order-1", "sats": 30_000})
        await rig.drive(lambda: rig.state("order-1") == "broadcast", mine=False, what="the broadcast")
    sub = rig.sub("order-1")
    held = rig.reserved(sub.id)
    await rig.tracker.domain.abandon(sub, rig.tracker._as_leader)  # the stale read's release
    assert rig.reserved(sub.id) == held and rig.state("order-1") == "broadcast"


async def test_a_submits_journal_row_spans_its_wait_for_finality(rig: Rig) -> None:
    """The run parks on confirmations and a later execution journals the receipt: the
    row starts when the intent was opened, so ``chainflow show``'s duration includes
    the wait, not just the last execution's part of it."""
    async with running_worker(rig.app, track=False, inline_wait=0.0):  # park at once, resume per block
        await rig.step()
        h = await rig.app.astart("pay_flow", {"id": "order-wait", "sats": 30_000})
        await rig.until_done(h.id, what="completion")
    assert rig.app.status(h.id).status == "completed"
    sub = rig.sub("order-wait")
    (row,) = [e for e in rig.app.journal(h.id) if e.key == "pay"]
    with rig.app.engine.begin() as conn:
        claims = conn.execute(sa.select(runs.c.attempt_count).where(runs.c.id == h.id)).scalar()
    assert claims is not None
    assert claims >= 2, "the run must have parked on its confirmations for this test to mean anything"
    assert row.started_at == sub.created_at
    assert row.finished_at is not None and row.finished_at >= sub.updated_at - 1e-6 > row.started_at


async def test_a_reorg_while_a_cancelled_run_compensates_does_not_refund_twice(rig: Rig) -> None:
    """Cancelled after its payment was final, the run refunds it, then backs off undoing
    an earlier step.  A reorg un-finalises the payment meanwhile: the payment is already
    undone, so the run is not rolled back to it (which would forget the refund and, the
    payment landing again, refund a second time).  One payment, one refund."""
    app, ledger = rig.app, rig.ledger
    tries = {"unreserve": 0}

    def unreserve(_: str) -> None:
        tries["unreserve"] += 1
        ledger.hit("unreserve x")
        if tries["unreserve"] == 1:
            raise RuntimeError("ledger down")

    @app.workflow("pay_then_wait")
    async def flow(ctx: cf.Context, _: Any) -> str:
        await ctx.step("reserve", lambda: "r", compensate=unreserve,
                       retry=cf.Retry(max_attempts=3, backoff="constant", initial=3600, jitter=0))
        r = await ctx.submit("pay", chain=CHAIN, tx=pay(PAYEE, 10_000), idempotency_key="k",
                             finality=cf.Confirmations(2), compensate=lambda rc: ledger.hit(f"refund {rc.tx_hash}"))
        await ctx.wait_for("go")
        return r.tx_hash

    async with running_worker(app, track=False):
        await rig.step()
        h = await app.astart("pay_then_wait", None)
        await rig.drive(lambda: app.status(h.id).waiting_on == ["go"], what="the payment final, the run waiting")
        await app.acancel(h.id)
        await rig.drive(lambda: rig.effects() == ["refund", "unreserve"] and app.status(h.id).status == "sleeping",
                        mine=False, what="the refund, then the unreserve backing off")
        sub = rig.sub("k")
        rig.chain.reorg(rig.chain.height - int(sub.block_number) + 1)  # the payment back to the mempool
        await rig.step()
        assert app.status(h.id).rollback is None, "an undone payment is not a rollback target"
        await rig.drive(lambda: rig.sub("k").state == "final", what="the payment final again")
        for _ in range(5):
            rig.chain.mine()
            await rig.step()
    assert len(_paid(rig, 10_000)) == 1
    assert [line for line in ledger.lines() if line.startswith("refund")] == [f"refund {sub.tx_hash}"]
