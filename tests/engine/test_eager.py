"""Eager start: a coroutine runs in the caller's turn until it first suspends, then
goes on as a task with the same outcome, cancellation and context a task would give."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from chainflow import eager

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
