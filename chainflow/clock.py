"""The engine's only source of time.

Durable sleeps of days, lease expiry and retry backoff all compare against this clock,
passed to ``Chainflow(clock=...)``, so tests can move time forward without patching
``time`` globally.  Times are float seconds since the epoch (UTC).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from typing import Protocol

# The longest sleep, wait timeout, workflow timeout or other duration the engine takes.
# Anything longer is almost surely a unit mistake (milliseconds passed as seconds) or
# an "infinite" placeholder; either would park a run past every operator's horizon.
MAX_DURATION = dt.timedelta(days=3653)  # 10 years
MAX_SECONDS = MAX_DURATION.total_seconds()


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


def to_seconds(value: float | dt.timedelta, what: str, *, positive: bool = False) -> float:
    """``value`` in seconds, or a ValueError/TypeError naming ``what`` and the value.

    Checked where a caller hands it over, before anything is journaled: a NaN compares
    false with every deadline (a worker spins on it forever) and an infinite or negative
    one parks a run for good or never; ``positive`` also refuses 0 where it means nothing
    (a step timeout, a lease).  A bool is refused: ``True`` seconds is a bug, not 1 s."""
    if isinstance(value, dt.timedelta):
        s = value.total_seconds()
    elif isinstance(value, float):
        s = float(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        # clamped into the refused range first: float() of an int past a float's range
        # (10**400) raises a bare OverflowError naming nothing
        s = float(min(max(value, -1), MAX_SECONDS + 1))
    else:
        raise TypeError(f"{what} must be a number of seconds or a timedelta, got {value!r}")
    if not math.isfinite(s) or s < 0 or (positive and s == 0):
        need = "a positive" if positive else "a non-negative"
        raise ValueError(f"{what} must be {need}, finite number of seconds, got {value!r}")
    if s > MAX_SECONDS:
        raise ValueError(f"{what} must be at most chainflow.MAX_DURATION ({MAX_DURATION.days} days), got {value!r}")
    return s


def seconds(value: float | dt.timedelta | None, what: str, *, positive: bool = False) -> float | None:
    """``to_seconds`` where None means "no limit"."""
    return None if value is None else to_seconds(value, what, positive=positive)


def to_epoch(value: float | dt.datetime | dt.timedelta, what: str, *, now: float | None = None) -> float:
    """``value`` as seconds since the epoch, or a TypeError/ValueError naming ``what``
    and the value: a timezone-aware datetime, a finite number of seconds, or where
    ``now`` is given (a sweep's "the last 7 days") a timedelta back from it.

    Checked before the time reaches a query: Postgres cannot compare a str or a
    datetime with a stored time (a raw error where SQLite answers), a NaN matches no
    row on either (an empty answer that looks like "none"), and a naive datetime would
    be read in this machine's zone, hours off.  A bool is refused as in ``to_seconds``."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"{what} must be timezone-aware, got naive {value!r}")
        return value.timestamp()
    if isinstance(value, dt.timedelta) and now is not None:
        if value < dt.timedelta(0):
            raise ValueError(f"{what} must be a timedelta back from now, not forward, got {value!r}")
        return now - value.total_seconds()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            s = float(value)
        except OverflowError:  # an int past a float's range (10**400)
            s = math.inf
        if math.isfinite(s):
            return s
        raise ValueError(f"{what} must be a finite number of seconds since the epoch, got {value!r}")
    span = ", a timedelta back from now" if now is not None else ""
    raise TypeError(f"{what} must be a datetime{span} or a number of seconds since the epoch, got {value!r}")
