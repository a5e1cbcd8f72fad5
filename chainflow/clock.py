"""The engine's only source of time.

Durable sleeps of days, lease expiry and retry backoff all compare against this clock,
passed to ``Chainflow(clock=...)``, so tests can move time forward without patching
``time`` globally.  Times are float seconds since the epoch (UTC).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time (may return early; callers re-check)."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to (``advance``/``set``).

    ``sleep`` waits in small real-time slices so a worker polling against a fake clock
    still notices when a test advances it.
    """

    def __init__(self, start: float | dt.datetime = 1_700_000_000.0) -> None:
        self._now = start.timestamp() if isinstance(start, dt.datetime) else float(start)

    def time(self) -> float:
        return self._now

    def advance(self, delta: float | dt.timedelta) -> None:
        self._now += delta.total_seconds() if isinstance(delta, dt.timedelta) else float(delta)

    def set(self, when: float | dt.datetime) -> None:
        target = when.timestamp() if isinstance(when, dt.datetime) else float(when)
        self._now = max(self._now, target)

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + seconds
        slept = 0.0
        while self._now < deadline and slept < seconds:
            await asyncio.sleep(0.01)
            slept += 0.01


def to_datetime(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)


def seconds(value: float | dt.timedelta | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
