"""The thread pool sync steps and database calls run in."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import pytest

from chainflow.threads import ThreadPool, offload

REQUEST = contextvars.ContextVar("REQUEST", default="none")


async def test_results_and_errors_come_back_to_the_loop() -> None:
    pool = ThreadPool(2, "t")
    try:
        assert await pool.run(lambda: threading.current_thread().name) != threading.current_thread().name
        with pytest.raises(ZeroDivisionError):
            await pool.run(lambda: 1 // 0)

        def stop() -> None:
            raise StopIteration("done")

        with pytest.raises(RuntimeError, match="StopIteration raised in a thread"):
            await pool.run(stop)
    finally:
        pool.shutdown(wait=True)


async def test_threads_grow_to_the_limit_and_no_further() -> None:
    pool = ThreadPool(3, "t")
    gate = threading.Event()
    seen: set[str] = set()

    def hold() -> None:
        seen.add(threading.current_thread().name)
        gate.wait(5)

    try:
        jobs = [pool.run(hold) for _ in range(6)]
        await asyncio.sleep(0.1)
        assert len(seen) == 3  # three run, three wait for a free thread
        gate.set()
        await asyncio.gather(*jobs)
        assert len(seen) == 3
    finally:
        pool.shutdown(wait=True)


async def test_a_cancelled_job_drops_its_outcome() -> None:
    pool = ThreadPool(1, "t")
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.run(lambda: time.sleep(0.2)), 0.01)
        assert await pool.run(lambda: "next") == "next"  # the thread went on to the next job
    finally:
        pool.shutdown(wait=True)


async def test_ended_tells_how_a_job_given_up_on_ended() -> None:
    """A step whose timeout gave up on its thread must still learn when that thread is
    done, and with what: its next attempt waits for it, its compensation undoes it."""
    pool = ThreadPool(1, "t")
    loop = asyncio.get_running_loop()
    gate = threading.Event()
    try:
        ran: asyncio.Future[Any] = loop.create_future()
        running = pool.run(lambda: gate.wait(5) and "late", ended=ran)
        dropped: asyncio.Future[Any] = loop.create_future()
        queued = pool.run(lambda: "never", ended=dropped)
        failed: asyncio.Future[Any] = loop.create_future()
        pool.run(lambda: 1 // 0, ended=failed)
        await asyncio.sleep(0.05)
        running.cancel()
        queued.cancel()
        assert not ran.done()  # the thread runs on
        gate.set()
        assert await ran == ("late", None)
        await asyncio.wait([dropped])
        assert dropped.cancelled()  # never ran
        result, exc = await failed
        assert result is None and isinstance(exc, ZeroDivisionError)
    finally:
        gate.set()
        pool.shutdown(wait=True)


async def test_shutdown_cancels_jobs_not_started_and_refuses_new_ones() -> None:
    pool = ThreadPool(1, "t")
    gate = threading.Event()
    running = pool.run(lambda: gate.wait(5))
    never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    queued = pool.run(lambda: "never", ended=never)
    await asyncio.sleep(0.05)
    pool.shutdown(wait=False)
    gate.set()
    assert await running is True
    with pytest.raises(asyncio.CancelledError):
        await queued
    await asyncio.wait([never])
    assert never.cancelled()
    with pytest.raises(RuntimeError, match="'t' is shut down"):
        pool.run(lambda: None)


def test_a_job_outliving_its_loop_is_dropped_quietly() -> None:
    pool = ThreadPool(1, "t")
    gate = threading.Event()
    done = threading.Event()

    def late() -> None:
        gate.wait(5)
        done.set()

    async def start() -> None:
        pool.run(late)

    asyncio.run(start())  # the loop closes while the job still runs
    gate.set()
    assert done.wait(5)
    pool.shutdown(wait=True)  # the thread survived the closed loop and exits cleanly


async def test_offload_carries_the_callers_context_variables() -> None:
    """Like ``asyncio.to_thread``, which the client's async methods used before."""
    REQUEST.set("req-7")
    assert await offload(REQUEST.get) == "req-7"
    assert await offload(lambda a, b: a + b, 2, 3) == 5
