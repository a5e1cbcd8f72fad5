"""Eager start: a coroutine runs in the caller's turn until it first suspends, then
goes on as a task with the same outcome, cancellation and context a task would give."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from chainflow.runtime import eager

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="outer")


async def test_a_coroutine_that_never_suspends_is_done_on_return() -> None:
    ran: list[str] = []

    async def work() -> int:
        ran.append("body")
        VAR.set("inner")
        return 7

    fut = eager.start(work())
    assert ran == ["body"] and fut.done() and fut.result() == 7
    assert VAR.get() == "outer"  # what it set stays in its own context


async def test_exceptions_land_in_the_future() -> None:
    async def bad() -> None:
        raise ValueError("boom")

    fut = eager.start(bad())
    assert fut.done()
    with pytest.raises(ValueError, match="boom"):
        fut.result()


async def test_a_suspending_coroutine_continues_as_a_task_in_its_context() -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def work() -> int:
        VAR.set("inner")
        value = await gate
        await asyncio.sleep(0)  # a bare yield, driven by the task like any other
        seen.append(VAR.get())
        return value + 1

    fut = eager.start(work())
    assert not fut.done()
    gate.set_result(41)
    assert await asyncio.wait_for(fut, 1) == 42
    assert seen == ["inner"] and VAR.get() == "outer"


async def test_cancelling_the_task_reaches_the_coroutine() -> None:
    cleaned: list[str] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def work() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # cleanup may itself suspend
            cleaned.append("cleanup")
            raise

    fut = eager.start(work())
    await asyncio.sleep(0)
    fut.cancel()
    with pytest.raises(asyncio.CancelledError):
        await fut
    assert cleaned == ["cleanup"] and gate.cancelled()


async def test_a_coroutine_that_swallows_a_cancel_finishes_normally() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def work() -> str:
        try:
            await gate
        except asyncio.CancelledError:
            return "kept going"
        return "not cancelled"

    fut = eager.start(work())
    await asyncio.sleep(0)
    fut.cancel()
    assert await fut == "kept going"


async def test_a_run_that_never_suspends_still_lets_the_loop_turn(tmp_path: Any) -> None:
    """Async steps that return at once, committed inline, never suspend the run: it must
    still give the loop a turn now and then, or its lease's heartbeat would starve."""
    import chainflow as cf

    app = cf.Chainflow(f"sqlite:///{tmp_path / 'cf.db'}")
    ticks = 0
    seen: list[int] = []  # the ticks when the run began and when it ended

    async def noop(i: int) -> int:
        return i

    @app.workflow("long")
    async def long(ctx: cf.Context, n: int) -> int:
        seen.append(ticks)
        for i in range(n):
            await ctx.step("s", noop, i)
        seen.append(ticks)
        return n

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    stop = asyncio.Event()
    worker = app.worker(concurrency=1, track=False)
    running = asyncio.create_task(worker.run(stop))
    ticking = asyncio.create_task(ticker())
    try:
        handle = await app.astart("long", 400)
        assert (await app.await_run(handle.id, timeout=60)).output == 400
    finally:
        ticking.cancel()
        stop.set()
        await running
        app.engine.dispose()
    assert seen[1] - seen[0] >= 400 // 64, seen  # a turn every 64 steps
