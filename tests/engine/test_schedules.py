"""Schedules: fire times from APScheduler's triggers, exactly one run per fire time
among any number of workers, the missed-fire policies on an injected clock, pause and
resume, and the checks made when a schedule is declared."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.runtime.schedules import Scheduler, fire_key
from chainflow.storage import schema

HOUR = 3600.0
T0 = 1_700_000_000.0 - 1_700_000_000.0 % HOUR  # on the hour: cron and interval marks line up
ROOT = Path(__file__).resolve().parents[2]


def make(make_app: Any, clock: cf.FakeClock, **options: Any) -> tuple[cf.Chainflow, Scheduler]:
    app = make_app(clock=clock)

    @app.workflow("report")
    async def report(ctx: cf.Context, day: Any) -> Any:
        return day

    options.setdefault("every", 60)
    app.schedule(name="reports", workflow="report", input={"kind": "daily"}, **options)
    scheduler = Scheduler(app.database, clock, app.registry, app.schedules)
    app.ensure_schema()
    scheduler.declare()
    return app, scheduler


def fired(app: cf.Chainflow) -> list[str]:
    """The idempotency keys of the runs the schedules started, in fire order."""
    with app.engine.connect() as conn:
        keys = conn.execute(sa.select(schema.runs.c.idempotency_key)
                            .where(schema.runs.c.idempotency_key.startswith("schedule:"))).scalars()
        return sorted(keys)


def keys_at(*offsets: float) -> list[str]:
    return sorted(fire_key("reports", T0 + o) for o in offsets)


@pytest.mark.parametrize(("missed", "expected"), [
    ("skip", []),  # the latest fire is 50 s late, past the 30 s grace
    ("once", [660]),  # one run, for the latest
    ("all", [540, 600, 660]),  # each, at most max_missed=3 of them: the latest
])
def test_missed_fires_follow_the_policy(make_app: Any, missed: str, expected: list[float]) -> None:
    clock = cf.FakeClock(T0)
    app, scheduler = make(make_app, clock, missed=missed, max_missed=3, grace=30)
    assert scheduler.tick() == [] and fired(app) == []  # timed from now: the first fire is T0+60
    clock.set(T0 + 60)
    (first,) = scheduler.tick()
    assert fired(app) == keys_at(60)
    assert app.status(first).input == {"kind": "daily"} and app.status(first).status == "pending"
    assert scheduler.tick() == []  # the same instant again: nothing more
    clock.set(T0 + 660 + 50)  # everything down for ten fires
    scheduler.tick()
    assert fired(app) == keys_at(60, *expected)
    (state,) = app.list_schedules()
    assert state.next_fire == T0 + 720 and state.paused is False
    if expected:
        assert state.last_fire == T0 + expected[-1]


def test_catch_up_is_bounded_by_the_window(make_app: Any) -> None:
    clock = cf.FakeClock(T0)
    app, scheduler = make(make_app, clock, every=None, cron="*/5 * * * *", missed="all", max_missed=10_000)
    clock.set(T0 + 300)
    scheduler.tick()
    clock.set(T0 + 3 * 86400)  # three days down; the window is one day
    scheduler.tick()
    keys = fired(app)
    assert len(keys) == 1 + 288  # the first fire, then one day of five-minute marks
    assert keys[-1] == fire_key("reports", T0 + 3 * 86400)
    marks = [dt.datetime.fromisoformat(k.removeprefix("schedule:reports:")) for k in keys]
    assert all(m.minute % 5 == 0 and m.second == 0 for m in marks)


@pytest.mark.parametrize("cron", ["30 2 * * *", "30 * * * *"])
def test_a_time_of_day_fires_once_on_the_night_clocks_go_back(make_app: Any, cron: str) -> None:
    """Europe/Paris goes from summer to winter time at 03:00 on 27 October 2024, so
    02:30 happens twice that night.  A daily payout at 02:30 is started once (at the
    first pass, 00:30 UTC), as every other day; an hourly one fires every real hour,
    the repeated one included."""
    start = dt.datetime(2024, 10, 25, 23, 0, tzinfo=dt.timezone.utc).timestamp()
    clock = cf.FakeClock(start)
    app, scheduler = make(make_app, clock, every=None, cron=cron, timezone="Europe/Paris", missed="all")
    while clock.time() < start + 2 * 86400:  # a worker ticking every minute for two nights
        scheduler.tick()
        clock.advance(60)
    keys = [k.removeprefix("schedule:reports:") for k in fired(app)]
    if cron == "30 2 * * *":
        assert keys == ["2024-10-26T00:30:00+00:00", "2024-10-27T00:30:00+00:00"], keys
    else:
        assert keys == [fire_key("", start + 1800 + h * HOUR).removeprefix("schedule::") for h in range(48)]


def test_two_workers_at_the_same_instant_start_each_fire_once(make_app: Any) -> None:
    clock = cf.FakeClock(T0)
    app, one = make(make_app, clock, missed="all")
    _, two = make(make_app, clock, missed="all")
    assert one.tick() + two.tick() == []  # timed: the first fire is T0+60
    clock.set(T0 + 60)
    assert len(one.tick() + two.tick()) == 1
    clock.set(T0 + 240)
    assert len(two.tick() + one.tick()) == 3
    assert fired(app) == keys_at(60, 120, 180, 240)


def test_pause_and_resume(make_app: Any) -> None:
    clock = cf.FakeClock(T0)
    app, scheduler = make(make_app, clock)
    app.pause_schedule("reports")
    clock.set(T0 + 600)
    assert scheduler.tick() == []
    (state,) = app.list_schedules()
    assert state.paused
    app.resume_schedule("reports")
    assert scheduler.tick() == []  # the fires of the pause are not made up: timed afresh
    assert app.list_schedules()[0].next_fire == T0 + 660
    clock.set(T0 + 660)
    assert len(scheduler.tick()) == 1 and fired(app) == keys_at(660)
    with pytest.raises(cf.ScheduleNotFoundError, match="'nope'"):
        app.pause_schedule("nope")


def test_declarations_are_checked(make_app: Any) -> None:
    app = make_app()

    @app.workflow("w")
    async def w(ctx: cf.Context, n: int) -> int:
        return n

    with pytest.raises(cf.ConfigurationError, match="'bad'.*cron"):
        app.schedule("61 * * * *", name="bad", workflow="w")
    with pytest.raises(cf.ConfigurationError, match="exactly one"):
        app.schedule("* * * * *", every=5, workflow="w")
    with pytest.raises(cf.ConfigurationError, match="missed must be one of"):
        app.schedule(every=5, workflow="w", missed="sometimes")
    with pytest.raises(cf.ConfigurationError, match="at least 1s"):
        app.schedule(every=0.5, workflow="w")
    with pytest.raises(cf.ConfigurationError, match="timezone"):
        app.schedule("* * * * *", workflow="w", timezone="Mars/Olympus")
    with pytest.raises(cf.UnknownWorkflowError):
        app.schedule(every=5, workflow="nope")
    with pytest.raises(ValueError, match="schedule name must not be empty"):  # not the workflow's name instead
        app.schedule(every=5, name="", workflow="w")
    app.schedule(every=5, workflow="w", input=1)
    with pytest.raises(cf.ConfigurationError, match="two schedules are named 'w'"):
        app.schedule(every=7, workflow="w")

    async def stray(ctx: cf.Context, _: Any) -> None:
        pass

    with pytest.raises(cf.ConfigurationError, match="above @app.workflow"):
        app.schedule(every=5)(stray)

    @app.schedule("0 9 * * 1-5", name="weekdays", timezone="Europe/Berlin")
    @app.workflow("w2")
    async def w2(ctx: cf.Context, _: Any) -> None:
        pass

    assert app.schedules["weekdays"].workflow == "w2"


@pytest.mark.postgres
def test_three_worker_processes_start_each_fire_exactly_once(pg_url: str, tmp_path: Path) -> None:
    """Three ``chainflow worker`` processes on one Postgres database, each running the
    scheduler loop of the same app: every fire time has exactly one run, none missing."""
    env = {**os.environ, "CF_URL": pg_url, "CF_EVERY": "1", "PYTHONPATH": str(ROOT)}
    cf.Chainflow(pg_url).ensure_schema()  # no process races another to create the tables
    procs = [subprocess.Popen([sys.executable, "-c", "from chainflow.cli import main; main()", "worker",
                               "tests.engine.schedule_app:app"],
                              env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / f"w{i}.log", "wb")) for i in range(3)]
    app = cf.Chainflow(pg_url)
    try:
        deadline = time.monotonic() + 60
        while len(fired(app)) < 6:
            assert time.monotonic() < deadline, [(tmp_path / f"w{i}.log").read_text()[-2000:] for i in range(3)]
            assert all(p.poll() is None for p in procs), [(tmp_path / f"w{i}.log").read_text()[-2000:]
                                                          for i in range(3)]
            time.sleep(0.2)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    keys = fired(app)
    times = [dt.datetime.fromisoformat(k.removeprefix("schedule:every-second:")).timestamp() for k in keys]
    assert Counter(keys).most_common(1)[0][1] == 1
    assert times == [times[0] + i for i in range(len(times))], times  # every second, none skipped
    with app.engine.connect() as conn:
        statuses = conn.execute(sa.select(schema.runs.c.status, sa.func.count()).group_by(schema.runs.c.status))
        assert set(dict(statuses.all())) <= {"completed", "pending", "running"}
    app.engine.dispose()
