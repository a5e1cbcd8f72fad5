"""A set/clear flag whose waiters are plain futures.

The executor waits on "the run changed", "stop" and the workflow task at once, once
per run and again whenever the run might have parked.  With ``asyncio.Event`` each of
those waits is a task wrapping ``event.wait()``, created, scheduled and cancelled:
more loop rounds per run than the run's own steps take on SQLite.
"""

from __future__ import annotations

import asyncio


class Flag:
    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    def future(self) -> asyncio.Future[None]:
        """Resolved once the flag is set (at once if it is); cancelling it is how a
        waiter gives up."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._set:
            waiter.set_result(None)
        else:
            self._waiters = [w for w in self._waiters if not w.done()]  # given up on
            self._waiters.append(waiter)
        return waiter
