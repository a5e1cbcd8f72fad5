"""Rate-limited logging for loops that keep failing the same way.

A worker whose database or RPC node is down retries several times a second; logging
a traceback on every try buries everything else (hundreds of lines a minute per
loop) and says nothing new after the first one.  ``FailureLog`` logs the first
failure of each kind with its traceback, then at most one summary line per
``interval`` with a count, and one line when the loop succeeds again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import type_name

SUMMARY_INTERVAL = 30.0  # seconds between two summaries of one ongoing failure


@dataclass
class _Streak:
    first: float  # when this kind of failure started
    last_line: float  # when a line about it was last written
    count: int = 1  # failures since it started
    unreported: int = 0  # failures since the last line


class FailureLog:
    """One per place that retries in a loop (claim loop, heartbeat, tracker...).

    Failures are grouped by exception type: the message of a recurring failure often
    varies (a port, a run id, a byte count) while being the same outage, and grouping
    by message would bring the flood back.  The latest message goes into each summary.
    Thread-safe: a commit thread and the event loop may share one."""

    def __init__(self, logger: logging.Logger, place: str, *, interval: float = SUMMARY_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not interval > 0:
            raise ValueError(f"FailureLog interval must be > 0 seconds, got {interval!r}")
        self.log = logger
        self.place = place
        self.interval = interval
        self._clock = clock
        self._streaks: dict[str, _Streak] = {}
        self._lock = threading.Lock()

    def failed(self, exc: BaseException, what: str = "failed", level: int = logging.ERROR) -> None:
        """Record one failure; logs the first of its kind with a traceback, then a
        summary at most once per interval."""
        kind = type_name(exc)
        now = self._clock()
        with self._lock:
            streak = self._streaks.get(kind)
            if streak is None:
                self._streaks[kind] = _Streak(now, now)
                first = True
            else:
                first = False
                streak.count += 1
                streak.unreported += 1
                if now - streak.last_line < self.interval:
                    return
                count, unreported, since = streak.count, streak.unreported, now - streak.first
                streak.last_line, streak.unreported = now, 0
        if first:
            self.log.log(level, "%s %s: %s (repeats of this failure are summarised every %.0fs)",
                         self.place, what, exc, self.interval, exc_info=exc)
        else:
            self.log.log(level, "%s still failing: %d %s failure(s) over %.0fs (%d since the last line), latest: %s",
                         self.place, count, type(exc).__name__, since, unreported, exc)

    def recovered(self) -> None:
        """The loop succeeded: one line if it had been failing, then forget the streaks."""
        if not self._streaks:  # the common case, lock-free: nothing was failing
            return
        with self._lock:
            streaks, self._streaks = self._streaks, {}
        if streaks:
            now = self._clock()
            total = sum(s.count for s in streaks.values())
            since = now - min(s.first for s in streaks.values())
            self.log.warning("%s recovered after %d failure(s) over %.1fs", self.place, total, since)
