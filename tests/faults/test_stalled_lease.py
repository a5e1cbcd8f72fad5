"""Leases under a stalled database and a stalled event loop (issue 12, item 2).

* The database stalls (another session holds the lock every write needs) for longer
  than the lease while the worker waits between two steps: the heartbeat cannot renew
  the lease, so when the wait ends the worker must not start the next step on faith;
  it asks the database first, and that answer comes only once the stall is over.
* A step blocks the event loop for three leases: the heartbeat, in a thread of its
  own, keeps the lease, so another worker polling meanwhile never takes the run over
  and the step's side effect happens once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.storage import codec
from chainflow.storage.schema import journal, runs

from ..engine._util import running_worker, wait_status, wait_until

LEASE = 1.0


class DatabaseStall:
    """Another session holds the lock a worker's writes need (SQLite: the write lock;
    Postgres: an EXCLUSIVE lock on the runs table) for ``hold`` seconds, from a thread."""

    def __init__(self, engine: sa.Engine, hold: float) -> None:
        self.url, self.hold = engine.url, hold
        self.locked_at: float | None = None
        self.released_at: float | None = None
        self._thread: threading.Thread | None = None

    def start_in(self, delay: float) -> None:
        self._thread = threading.Thread(target=self._run, args=(delay,), daemon=True)
        self._thread.start()

    def _run(self, delay: float) -> None:
        time.sleep(delay)
        if self.url.get_backend_name() == "sqlite":
            import sqlite3

            conn: Any = sqlite3.connect(str(self.url.database), timeout=10, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
        else:
            import psycopg

            conninfo = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
            conn = psycopg.connect(conninfo)
            conn.execute("LOCK TABLE cf_runs IN EXCLUSIVE MODE")
        self.locked_at = time.time()
        time.sleep(self.hold)
        self.released_at = time.time()
        conn.rollback()
        conn.close()

    def join(self) -> None:
        assert self._thread is not None
        self._thread.join()


@pytest.mark.timeout(60)
async def test_worker_whose_database_stalls_past_its_lease_asks_before_the_next_step(db_url: str) -> None:
    app = cf.Chainflow(db_url, lease_seconds=LEASE)
    stall = DatabaseStall(app.engine, hold=2.5)
    started: list[float] = []

    def arm() -> None:
        stall.start_in(0.2)  # once this step and the sleep below are committed

    async def effect() -> None:
        started.append(time.time())

    @app.workflow("stalled")
    async def stalled(ctx: cf.Context, _: None) -> None:
        await ctx.step("arm", arm)
        await ctx.sleep("gap", 1.5)  # waited inline: the run stays held, no database needed
        await ctx.step("after", effect)

    try:
        async with running_worker(app, inline_wait=2.0) as _:
            run_id = (await app.astart("stalled")).id
            st = await wait_status(app, run_id, timeout=20)
        stall.join()
        assert st.status == "completed", st.error
        with app.engine.begin() as conn:
            wake_at = codec.loads(conn.execute(sa.select(journal.c.output).where(
                journal.c.run_id == run_id, journal.c.key == "gap")).scalar_one())
            fence = conn.execute(sa.select(runs.c.fence).where(runs.c.id == run_id)).scalar_one()
    finally:
        app.engine.dispose()
    assert stall.locked_at is not None and stall.released_at is not None
    # the scenario: the wait ended while the database was stalled and the lease lapsed
    assert stall.locked_at + LEASE < wake_at < stall.released_at
    # the next step waited for the database to confirm the lease (nobody else took it)
    assert len(started) == 1 and started[0] >= stall.released_at, (started, stall.released_at)
    assert fence == 1


@pytest.mark.timeout(60)
async def test_heartbeat_keeps_the_lease_while_a_step_blocks_the_event_loop(db_url: str) -> None:
    app_a = cf.Chainflow(db_url, lease_seconds=LEASE)
    app_b = cf.Chainflow(db_url, lease_seconds=LEASE)
    hogs: list[str] = []

    def register(app: cf.Chainflow, name: str) -> None:
        async def hog() -> None:
            hogs.append(name)
            time.sleep(3 * LEASE)  # a careless async step: the event loop stops with it

        @app.workflow("hog")
        async def hog_flow(ctx: cf.Context, _: None) -> None:
            await ctx.step("hog", hog)

    register(app_a, "A")
    register(app_b, "B")

    # B polls from a thread of its own with its own loop: A's loop is the one blocked
    b_polling, stop_b = threading.Event(), threading.Event()

    async def b_main() -> None:
        async with running_worker(app_b):
            b_polling.set()
            while not stop_b.is_set():
                await asyncio.sleep(0.02)

    b = threading.Thread(target=asyncio.run, args=(b_main(),))
    b.start()
    try:
        assert b_polling.wait(10)
        async with running_worker(app_a) as worker_a:
            await wait_until(lambda: worker_a.loop is not None, what="worker A to start")
            run_id = app_a.start("hog").id  # born claimed by A's worker: B never sees it due
            # done, or taken over by B (then A and B go on taking it from each other)
            await wait_until(lambda: len(hogs) > 1 or app_a.status(run_id).done, timeout=20,
                             what="the run to finish")
    finally:
        stop_b.set()
        b.join()
    st = app_a.status(run_id)
    with app_a.engine.begin() as conn:
        fence = conn.execute(sa.select(runs.c.fence).where(runs.c.id == run_id)).scalar_one()
    app_a.engine.dispose()
    app_b.engine.dispose()
    assert hogs == ["A"], "the run was taken over while its worker was alive"
    assert st.status == "completed", st.error
    assert fence == 1
