"""Schedules: a workflow started on a cron expression or an interval.

APScheduler's triggers do the time arithmetic (``get_next_fire_time``: month lengths,
time zones, daylight saving); the engine owns the rest.  Every worker of an app that
declares a schedule runs the loop below; the schedule's row in ``cf_schedules`` is
locked by whichever worker fires it, and each fire's run is created with the
idempotency key ``schedule:<name>:<fire time>`` (``storage.schedulestore``), so any
number of workers start exactly one run per fire time.  APScheduler's job stores and
executors are not used: the runs table is the job store.

Fires missed while no worker ran follow the schedule's ``missed`` policy, bounded by
``window`` (fires older than that are never started):

* ``skip``: only fires at most ``grace`` seconds late start;
* ``once`` (the default): everything due coalesces into one run, for the latest fire;
* ``all``: each due fire starts, at most ``max_missed`` of them (the latest, oldest first).

Interval schedules are anchored at the Unix epoch (or ``start``), not at the moment a
worker started: every worker computes the same fire times.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import zoneinfo
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from .. import metrics
from ..clock import Clock, to_seconds
from ..errors import ConfigurationError
from ..lograte import FailureLog
from ..storage import limits, schedulestore, store
from ..storage.database import Database
from .registry import Registry

log = logging.getLogger("chainflow.schedules")

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MIN_INTERVAL = 1.0  # seconds: a window's catch-up stays a bounded walk
_IDLE = 1.0  # seconds between two looks when no fire is near (a resumed or new schedule)


class Missed(StrEnum):
    SKIP = "skip"
    ONCE = "once"
    ALL = "all"


@dataclass(frozen=True)
class Schedule:
    """A declared schedule (``Chainflow.schedule``); checked when declared."""

    name: str
    workflow: str
    input: Any
    cron: str | None = None
    every: float | None = None
    start: float = 0.0  # the anchor of an interval schedule (epoch seconds)
    timezone: str = "UTC"
    missed: Missed = Missed.ONCE
    max_missed: int = 10
    grace: float = 60.0
    window: float = 86400.0

    def __post_init__(self) -> None:
        what = f"schedule {self.name!r}"
        if (self.cron is None) == (self.every is None):
            raise ConfigurationError(f"{what}: give exactly one of a cron expression and every=")
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
            raise ConfigurationError(f"{what}: unknown timezone {self.timezone!r}") from None
        if self.every is not None and self.every < _MIN_INTERVAL:
            raise ConfigurationError(f"{what}: every= must be at least {_MIN_INTERVAL:g}s, got {self.every!r}")
        if isinstance(self.max_missed, bool) or not isinstance(self.max_missed, int) or self.max_missed < 1:
            raise ConfigurationError(f"{what}: max_missed must be an int >= 1, got {self.max_missed!r}")
        self.trigger()  # a bad cron expression fails here, naming the schedule

    def trigger(self) -> BaseTrigger:
        if self.cron is not None:
            try:
                return CronTrigger.from_crontab(self.cron, timezone=self.timezone)
            except (ValueError, TypeError) as exc:
                raise ConfigurationError(f"schedule {self.name!r}: bad cron expression {self.cron!r}: {exc}") \
                    from None
        assert self.every is not None
        return IntervalTrigger(seconds=self.every, start_date=_instant(self.start), timezone=self.timezone)

    def spec(self) -> str:
        """What the workers that declare it must agree on, as stored: a change restarts
        its timing."""
        return json.dumps({"cron": self.cron, "every": self.every, "start": self.start, "timezone": self.timezone,
                           "missed": self.missed, "max_missed": self.max_missed, "grace": self.grace,
                           "window": self.window}, sort_keys=True)

    def first_after(self, now: float) -> float | None:
        """The first fire time strictly after ``now``."""
        fire = self._next(self.trigger(), None, _instant(now) + dt.timedelta(microseconds=1))
        return None if fire is None else fire.timestamp()

    def _next(self, trigger: BaseTrigger, previous: dt.datetime | None, after: dt.datetime) -> dt.datetime | None:
        """The trigger's next fire time, but a cron time of day fires once a day: on the
        night clocks go back, the trigger matches both passes of the repeated hour
        ("30 2 * * *" at 02:30 summer time and 02:30 winter time), and the second pass
        is skipped.  An hour field with ``*`` (hourly, every 15 minutes) fires in both,
        which are different hours."""
        fire = trigger.get_next_fire_time(previous, after)
        while fire is not None and self._second_pass(fire):
            fire = trigger.get_next_fire_time(fire, fire)
        return fire

    def _second_pass(self, fire: dt.datetime) -> bool:
        if self.cron is None or "*" in self.cron.split()[1]:
            return False
        return fire.astimezone(zoneinfo.ZoneInfo(self.timezone)).fold == 1

    def due(self, next_fire: float, now: float) -> tuple[list[float], float | None]:
        """The fire times to start at ``now`` (``next_fire`` <= now is the first not yet
        started), by the ``missed`` policy, and the next fire time after ``now``."""
        trigger = self.trigger()
        start = max(next_fire, now - self.window)  # older fires are never started
        keep = {Missed.ONCE: 1, Missed.ALL: self.max_missed, Missed.SKIP: None}[self.missed]
        found: deque[float] = deque(maxlen=keep)
        fire = self._next(trigger, None, _instant(start))
        while fire is not None and fire.timestamp() <= now:
            if self.missed != Missed.SKIP or now - fire.timestamp() <= self.grace:
                found.append(fire.timestamp())
            fire = self._next(trigger, fire, fire)
        return list(found), None if fire is None else fire.timestamp()


def _instant(t: float) -> dt.datetime:
    return _EPOCH + dt.timedelta(seconds=t)


def fire_key(name: str, fire: float) -> str:
    """The idempotency key of the run a schedule starts for one fire time."""
    return f"schedule:{name}:{_instant(fire).isoformat()}"


def check_name(name: str) -> str:
    return limits.text(name, "schedule name", 200)


class Scheduler:
    """The loop a worker runs for its app's schedules (one per worker; each fire is
    started once among all of them)."""

    def __init__(self, database: Database, clock: Clock, registry: Registry, schedules: dict[str, Schedule],
                 on_fired: Callable[[], None] = lambda: None) -> None:
        self.database, self.clock, self.registry = database, clock, registry
        self.schedules = schedules
        self._on_fired = on_fired
        self._failures = FailureLog(log, "firing schedules")

    def declare(self) -> None:
        now = self.clock.time()
        for s in self.schedules.values():
            self.database.tx(schedulestore.declare, s.name, s.workflow, s.spec(), now)

    def tick(self) -> list[str]:
        """Start the runs of every fire due now; returns their run ids."""
        now = self.clock.time()
        started = self.database.tx(self._fire, now)
        for name, _ in started:
            metrics.inc("chainflow_schedule_fires_total", schedule=name)
        if started:
            self._on_fired()
        return [run_id for _, run_id in started]

    def _fire(self, conn: Any, now: float) -> list[tuple[str, str]]:
        started: list[tuple[str, str]] = []
        for row in schedulestore.due(conn, self.schedules, now):
            s = self.schedules[row.name]
            if row.next_fire is None:  # new, resumed or changed: timing starts now
                schedulestore.advance(conn, s.name, s.first_after(now), None, now)
                continue
            fires, following = s.due(row.next_fire, now)
            last: tuple[float, str] | None = None
            wf = self.registry.get(s.workflow)
            for fire in fires:
                key = fire_key(s.name, fire)
                if store.run_by_key(conn, key) is None:
                    run_id = store.insert_run(conn, **wf.new_run(s.input, key, now))
                    started.append((s.name, run_id))
                    last = (fire, run_id)
                    log.info("schedule %s fired for %s: run %s", s.name, _instant(fire).isoformat(), run_id)
            schedulestore.advance(conn, s.name, following, last, now)
        return started

    async def run(self, stopping: asyncio.Event, offload: Callable[..., Any]) -> None:
        """Fire due schedules until ``stopping``; sleeps until the earliest next fire
        (at most ``_IDLE``: a resume or another worker's change is noticed soon)."""
        await offload(self.declare)
        while not stopping.is_set():
            wait = _IDLE
            try:
                await offload(self.tick)
                upcoming = await offload(self.database.read, schedulestore.next_due, self.schedules)
            except Exception as exc:  # database away for a moment: the fires wait for it
                self._failures.failed(exc, "failed; retrying")
            else:
                self._failures.recovered()
                if upcoming is not None:
                    wait = min(_IDLE, max(0.0, upcoming - self.clock.time()))
            try:
                await asyncio.wait_for(stopping.wait(), timeout=max(wait, 0.01))
            except TimeoutError:
                pass


def declare(name: str | None, workflow: str, input: Any, *, cron: str | None, every: float | dt.timedelta | None,
            start: float | dt.datetime, timezone: str, missed: str, max_missed: int, grace: float | dt.timedelta,
            window: float | dt.timedelta, registry: Registry) -> Schedule:
    """A checked ``Schedule`` (the app's ``schedule`` hands its arguments here)."""
    label = check_name(workflow if name is None else name)
    what = f"schedule {label!r}"
    try:
        policy = Missed(missed)
    except ValueError:
        raise ConfigurationError(f"{what}: missed must be one of {', '.join(Missed)}, got {missed!r}") from None
    if isinstance(start, dt.datetime):
        if start.tzinfo is None:
            raise ConfigurationError(f"{what}: start must be timezone-aware, got {start!r}")
        start = start.timestamp()
    wf = registry.get(workflow)
    wf.new_run(input, None, 0.0)  # the input is checked now, not at the first fire
    return Schedule(label, workflow, input, cron=cron,
                    every=None if every is None else to_seconds(every, f"every of {what}", positive=True),
                    start=float(start), timezone=timezone, missed=policy, max_missed=max_missed,
                    grace=to_seconds(grace, f"grace of {what}"), window=to_seconds(window, f"window of {what}"))
