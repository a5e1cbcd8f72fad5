"""Group commit in a thread of its own (the default for a Postgres across the network):
the event loop stays free while a batch commits, writes arriving meanwhile form the
next batch, and every write still resumes only once durable."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import sqlalchemy as sa

import chainflow as cf
from chainflow.runtime.committer import Committer
from chainflow.storage.connector import is_local

from ._util import running_worker, wait_status


def _runs(app: cf.Chainflow, n: int) -> list[str]:
    """Runs nobody claimed: their fence is 0, which a write can name."""
    @app.workflow("noop")
    async def noop(ctx: cf.Context, _: int) -> None:
        return None

    return [app.start("noop", i).id for i in range(n)]


async def test_the_loop_runs_on_while_a_batch_commits(make_app: Any) -> None:
    app = make_app()
    run_id, = _runs(app, 1)
    committer = Committer(app.engine, in_thread=True)

    def slow(conn: sa.Connection) -> int:
        time.sleep(0.3)  # a round trip to a far database
        return int(conn.exec_driver_sql("SELECT 1").scalar_one())

    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        assert await committer.write(run_id, 0, [slow]) == [1]
    finally:
        ticking.cancel()
        await committer.close()
    assert ticks >= 10, ticks


async def test_writes_made_during_a_commit_share_the_next_one(make_app: Any) -> None:
    app = make_app()
    ids = _runs(app, 6)
    committer = Committer(app.engine, in_thread=True)
    batches: list[int] = []
    commit = committer._commit

    def counted(batch: list[Any]) -> list[Any]:
        batches.append(len(batch))
        time.sleep(0.05)
        return commit(batch)

    committer._commit = counted  # type: ignore[method-assign]

    def op(conn: sa.Connection) -> int:
        return int(conn.exec_driver_sql("SELECT 2").scalar_one())

    try:
        first = asyncio.ensure_future(committer.write(ids[0], 0, [op]))
        await asyncio.sleep(0.01)  # the first batch is in flight
        rest = [asyncio.ensure_future(committer.write(run_id, 0, [op])) for run_id in ids[1:]]
        assert await asyncio.gather(first, *rest) == [[2]] * 6
    finally:
        await committer.close()
    assert batches == [1, 5]


async def test_a_worker_committing_in_a_thread_runs_workflows(make_app: Any) -> None:
    app = make_app()

    @app.workflow("sum3")
    async def sum3(ctx: cf.Context, x: int) -> int:
        total = 0
        for i in range(3):
            total += await ctx.step("add", lambda i=i: x + i)
        return total

    stop = asyncio.Event()
    worker = app.worker(concurrency=8, commit_in_thread=True, track=False)
    running = asyncio.create_task(worker.run(stop))
    try:
        handles = [await app.astart("sum3", n) for n in range(20)]
        done = [await app.await_run(h.id, timeout=30) for h in handles]
    finally:
        stop.set()
        await running
    assert [d.output for d in done] == [3 * n + 3 for n in range(20)]


def test_which_databases_count_as_local() -> None:
    assert is_local(sa.make_url("sqlite:///x.db"))
    assert is_local(sa.make_url("postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    assert is_local(sa.make_url("postgresql+psycopg://postgres@localhost/test"))
    assert is_local(sa.make_url("postgresql+psycopg:///test?host=/var/run/postgresql"))
    assert not is_local(sa.make_url("postgresql+psycopg://app@db.internal:5432/payments"))


async def test_a_step_waits_for_a_commit_in_flight_that_carries_an_earlier_step_row(make_app: Any) -> None:
    """A step that was its run's only work defers its row (``runtime.scope``); a sibling
    branch's write may then take the row along.  While that write is still committing,
    the first branch's next step must not start: it waits for the row to be durable."""
    app = make_app()
    seen: list[list[str]] = []

    async def noop() -> int:
        return 1

    def look(run_id: str) -> int:
        seen.append([e.key for e in app.journal(run_id)])
        return 2

    @app.workflow("pair")
    async def pair(ctx: cf.Context, _: Any) -> None:
        go = asyncio.Event()

        async def left() -> None:
            await ctx.step("a1", noop)  # nothing else in flight: its row is deferred
            go.set()
            await asyncio.sleep(0)  # the right branch starts its write, which takes a1's row along
            await ctx.step("a2", look, ctx.run_id)

        async def right() -> None:
            await go.wait()
            await ctx.sleep("nap", 0)

        await ctx.gather(left(), right())

    async with running_worker(app, commit_in_thread=True) as worker:
        committer = worker.committer
        commit = committer._commit

        def slowly(batch: list[Any]) -> list[Any]:
            if any(getattr(op, "row", {}).get("kind") == "sleep" for item in batch for op in item.ops):
                time.sleep(0.3)  # the write carrying a1's row is still in flight when a2 could start
            return commit(batch)

        committer._commit = slowly  # type: ignore[method-assign]
        run_id = app.start("pair").id
        st = await wait_status(app, run_id)
    assert st.status == "completed", st.error
    assert seen == [["a1", "nap"]]
