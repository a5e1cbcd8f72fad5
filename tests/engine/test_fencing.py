"""Fencing: once another worker took over an expired lease, the old owner cannot write."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

import chainflow as cf
from chainflow.storage import store

from ._util import wait_until

LEASE = 30.0


def register_transfer(app: cf.Chainflow, calls: Any, gates: list[asyncio.Event]) -> None:
    async def send(amount: int) -> str:
        n = calls.count("send-start")
        calls.hit("send-start")
        await gates[n].wait()  # call n proceeds only when the test says so
        return f"sent by call {n}"

    @app.workflow("transfer")
    async def transfer(ctx: cf.Context, amount: int) -> str:
        await ctx.step("prepare", calls.hit, "prepare")
        return await ctx.step("send", send, amount)


@dataclass
class Rivals:
    """Two workers (two apps, one database, one fake clock) and one transfer run whose
    ``send`` calls wait for their gate."""

    clock: cf.FakeClock
    gates: list[asyncio.Event]
    app_a: cf.Chainflow
    app_b: cf.Chainflow
    worker_a: Any
    worker_b: Any
    run_id: str


@contextlib.asynccontextmanager
async def rivals(make_app: Any, calls: Any, lease: float) -> AsyncIterator[Rivals]:
    clock = cf.FakeClock()
    gates = [asyncio.Event(), asyncio.Event()]
    app_a = make_app(clock=clock, lease_seconds=lease)
    app_b = make_app(clock=clock, lease_seconds=lease)
    register_transfer(app_a, calls, gates)
    register_transfer(app_b, calls, gates)
    run_id = app_a.start("transfer", 5).id
    worker_a = app_a.worker(poll_interval=0.02)
    worker_b = app_b.worker(poll_interval=0.02)
    await worker_a.start()
    await worker_b.start()
    try:
        yield Rivals(clock, gates, app_a, app_b, worker_a, worker_b, run_id)
    finally:
        for gate in gates:
            gate.set()
        await worker_a.close()
        await worker_b.close()


async def test_worker_that_lost_its_lease_cannot_write(make_app: Any, calls: Any) -> None:
    async with rivals(make_app, calls, LEASE) as r:
        clock, gates, app_a, worker_a, worker_b, run_id = r.clock, r.gates, r.app_a, r.worker_a, r.worker_b, r.run_id
        assert await worker_a.poll() == 1
        await wait_until(lambda: calls.count("send-start") == 1, what="worker A inside the step")
        fence_a = worker_a.executions[run_id].claim.fence

        # A stalls (GC pause, partition) past its lease; B may now claim the run
        assert await worker_b.poll() == 0  # not before the lease expired
        clock.advance(LEASE + 1)
        assert await worker_b.poll() == 1
        await wait_until(lambda: calls.count("send-start") == 2, what="worker B inside the step")
        assert worker_b.executions[run_id].claim.fence == fence_a + 1

        # A wakes up and finishes its step: the journal write is refused
        gates[0].set()
        await wait_until(lambda: run_id in worker_a.outcomes, what="worker A to give up")
        assert worker_a.outcomes[run_id].status == "abandoned"
        assert [e.key for e in app_a.journal(run_id)] == ["prepare"]

        # any other write with A's fence is refused too
        with pytest.raises(cf.LeaseLostError):
            await worker_a.committer.write(
                run_id, fence_a, [store.RunFinish(run_id, cf.RunState.COMPLETED, '"A"', None, 0.0)]
            )

        gates[1].set()
        await wait_until(lambda: run_id in worker_b.outcomes, what="worker B to finish")

    st = r.app_b.status(run_id)
    assert st.status == "completed", st.error
    assert st.output == "sent by call 1"
    journal = r.app_b.journal(run_id)
    assert [(e.key, e.output) for e in journal] == [("prepare", None), ("send", "sent by call 1")]
    assert calls.count("prepare") == 1


async def test_heartbeat_keeps_the_lease_of_a_live_worker(make_app: Any, calls: Any) -> None:
    """The converse: a live worker's heartbeat extends its lease, so nobody can steal it."""
    async with rivals(make_app, calls, 0.3) as r:  # heartbeat every 0.1s of real time
        clock, gates, worker_a, worker_b, run_id = r.clock, r.gates, r.worker_a, r.worker_b, r.run_id
        assert await worker_a.poll() == 1
        await wait_until(lambda: calls.count("send-start") == 1, what="worker A inside the step")
        for _ in range(5):
            clock.advance(0.1)  # a third of a lease per heartbeat period
            await asyncio.sleep(0.15)
            assert await worker_b.poll() == 0
        gates[0].set()
        await wait_until(lambda: run_id in worker_a.outcomes, what="worker A to finish")
    assert r.app_a.status(run_id).output == "sent by call 0"
    assert calls.count("send-start") == 1


def test_fence_check_of_a_batch_keeps_only_matching_runs_and_uses_the_key(make_app: Any) -> None:
    """A group commit fences many runs in one read; it must answer per run and look each
    run up by key (SQLite planned the former row-value form as a scan of every run)."""
    app = make_app()

    @app.workflow("noop")
    async def noop(ctx: cf.Context, _: int) -> None:
        return None

    ids = [app.start("noop", i).id for i in range(3)]
    raw = app.engine.raw_connection()
    try:
        style, dbapi = app.engine.dialect.paramstyle, raw.dbapi_connection
        assert store.fences_ok(dbapi, style, {ids[0]: 0, ids[1]: 7, ids[2]: 0}) == {ids[0], ids[2]}
        if app.engine.dialect.name == "sqlite":
            sql = store._hot_sql(style, "fence", 3)
            plan = " ".join(str(row[-1]) for row in dbapi.execute(f"EXPLAIN QUERY PLAN {sql}", ids))
            assert "SEARCH" in plan and "SCAN cf_runs" not in plan, plan
    finally:
        raw.rollback()
        raw.close()


async def test_a_worker_reclaiming_its_own_lapsed_run_keeps_the_new_execution_leased(make_app: Any,
                                                                                     calls: Any) -> None:
    """A's lease lapses while its execution is inside a step (a database outage longer
    than the lease), and A itself claims the run again.  The stale execution is stopped
    and, ending, leaves the new one in place: the heartbeat keeps renewing it, so B
    cannot take the run while A executes it (which would run the step a third time)."""
    async with rivals(make_app, calls, 0.3) as r:
        assert await r.worker_a.poll() == 1
        await wait_until(lambda: calls.count("send-start") == 1, what="A inside the step")
        for _ in range(50):
            r.clock.advance(1.0)
            if await r.worker_a.poll() == 1:
                break
        await wait_until(lambda: calls.count("send-start") == 2, what="A's second execution inside the step")
        r.gates[0].set()  # the stale execution's step returns; it is over
        await asyncio.sleep(0.3)
        for _ in range(6):
            r.clock.advance(0.1)  # a third of a lease per heartbeat period
            await asyncio.sleep(0.15)
            assert await r.worker_b.poll() == 0, "B took over a run A is still executing"
        r.gates[1].set()
        await wait_until(lambda: r.worker_a.outcomes.get(r.run_id) is not None
                         and r.worker_a.outcomes[r.run_id].status == "completed", what="A to finish")
    assert calls.count("send-start") == 2
