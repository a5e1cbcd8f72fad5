"""Small helpers shared by the engine tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import chainflow as cf
from chainflow.states import TERMINAL


@contextlib.asynccontextmanager
async def running_worker(app: cf.Chainflow, stop_within: float = 10.0, **options: Any) -> AsyncIterator[Any]:
    """A real worker polling in the background of this event loop."""
    options.setdefault("poll_interval", 0.02)
    worker = app.worker(**options)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, stop_within)


async def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_status(app: cf.Chainflow, run_id: str, statuses: Iterable[str] = TERMINAL,
                      timeout: float = 10.0) -> cf.RunStatus:
    wanted = tuple(statuses)
    end = time.monotonic() + timeout
    while True:
        st = await app.astatus(run_id)
        if st.status in wanted:
            return st
        if time.monotonic() > end:
            raise AssertionError(f"run {run_id} is {st.status}, not in {wanted}, after {timeout}s")
        await asyncio.sleep(0.01)


def live_keys(app: cf.Chainflow, run_id: str) -> list[tuple[str, str, str]]:
    """(branch, key, kind) of every live journal row, in recording order."""
    return [(e.branch, e.key, e.kind) for e in app.journal(run_id) if not e.invalidated]


def error_type(info: dict[str, Any] | None) -> str:
    assert info is not None, "expected an error"
    return str(info["type"])


def claim_count(app: cf.Chainflow, run_id: str) -> int:
    """How many times a worker claimed the run (1 = it never suspended or moved)."""
    import sqlalchemy as sa

    from chainflow.storage.schema import runs

    with app.engine.begin() as conn:
        return int(conn.execute(sa.select(runs.c.attempt_count).where(runs.c.id == run_id)).scalar_one())
