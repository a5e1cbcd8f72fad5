"""Blocking work (sync steps, database calls) handed from the event loop to threads.

``loop.run_in_executor`` goes through ``concurrent.futures``: a second future with its
own lock and condition, chained to the asyncio one by callbacks.  On a small VM that
round trip costs ~170 µs, twice a bare queue hand-off, and every sync step pays it
(anyio's ``to_thread`` costs more still).  Here a job is a tuple on a ``SimpleQueue``
and its outcome comes back with one ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# what a call in a thread returned, or what it raised
Ended = tuple[Any, BaseException | None]
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any], "asyncio.Future[Ended] | None"]


class ThreadPool:
    """Up to ``max_threads`` threads, started as jobs find none idle."""

    def __init__(self, max_threads: int, name: str) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {max_threads}")
        self._max = max_threads
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # one permit per thread waiting for a job
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, fn: Callable[[], T], *, ended: asyncio.Future[Ended] | None = None) -> asyncio.Future[T]:
        """Start ``fn()`` in a thread; the future resolves on the calling loop.  Cancelling
        the future drops the outcome but cannot stop the thread (Python has no way to).
        ``ended``, for a caller that must know when the thread is done with ``fn`` even
        after giving up on it (a step's timeout): set to ``fn``'s outcome once it
        returns or raises, cancelled when ``fn`` never runs (dropped or shut down first)."""
        if self._closed:
            raise RuntimeError(f"thread pool {self._name!r} is shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, ended))
        if not self._idle.acquire(blocking=False):
            self._grow()
        return future

    def _grow(self) -> None:
        with self._lock:
            if len(self._threads) < self._max and not self._closed:
                # daemon: a step that never returns must not keep the process alive
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, ended = job
            del job
            if future.done():
                # given up while it waited for a thread (a step's timeout, a cancel): the
                # caller has recorded it as not run, so it must not run.  Read from this
                # thread without the loop: a stale "not done" is a job cancelled while it
                # starts, which no check here could stop either (``ended`` tells which)
                if ended is not None:
                    _on(loop, ended.cancel)
                del loop, future, fn, ended
                self._idle.release()
                continue
            try:
                outcome: Ended = (fn(), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                outcome = (None, exc)
            _on(loop, _settle, future, ended, outcome)
            del loop, future, fn, ended, outcome
            self._idle.release()

    def shutdown(self, *, wait: bool) -> None:
        """Stop taking jobs; jobs not started yet are cancelled.  ``wait``: join the
        threads (those running a job finish it first)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                loop, future, _, ended = job
                _on(loop, future.cancel)
                if ended is not None:
                    _on(loop, ended.cancel)
        for _ in threads:
            self._jobs.put(None)
        if wait:
            for thread in threads:
                thread.join()


def _on(loop: asyncio.AbstractEventLoop, call: Callable[..., object], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(call, *args)
    except RuntimeError:
        pass  # the loop has closed: nobody is waiting for this outcome


def _settle(future: asyncio.Future[Any], ended: asyncio.Future[Ended] | None, outcome: Ended) -> None:
    if ended is not None and not ended.done():
        ended.set_result(outcome)
    if future.done():  # cancelled meanwhile (a step timeout, a shutdown)
        return
    result, exc = outcome
    if exc is None:
        future.set_result(result)
    elif isinstance(exc, StopIteration):  # asyncio futures refuse it
        future.set_exception(RuntimeError(f"{type(exc).__name__} raised in a thread: {exc}"))
    else:
        future.set_exception(exc)


_shared: ThreadPool | None = None
_shared_lock = threading.Lock()


def offload(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``asyncio.to_thread`` on a process-wide pool: the caller's context variables
    travel with the call; as many threads as asyncio's default executor allows."""
    global _shared
    if _shared is None:
        with _shared_lock:
            if _shared is None:
                _shared = ThreadPool(min(32, (os.cpu_count() or 1) + 4), "chainflow-offload")
    return _shared.run(functools.partial(contextvars.copy_context().run, fn, *args))
