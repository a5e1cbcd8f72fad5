"""Stopping a worker (``Worker.close``; SIGINT/SIGTERM to ``chainflow worker``) while a
run's step is in flight.

A sync step runs in a thread nothing can stop.  A stopping worker used to stop its
heartbeat first and then wait for such a step (with ``compensate=``) only to throw its
result away, or (without) to release the run while the thread still ran: another worker
then ran the step again, after the lease lapsed or at once, alongside the first.  Now
the worker keeps the lease alive while the thread finishes, journals the step and only
then hands the run back; past its grace period, or when hurried (a second signal), it
stops waiting and leaves such a run leased, as a crash would.  Async steps and sleeps
are cut off at once, as before."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.storage.schema import runs

from ._util import claim_count, live_keys, running_worker, wait_status, wait_until

STEP_SECONDS = 1.2  # more than two leases of the first test's workers


def register(app: cf.Chainflow, calls: Any, gate: threading.Event | None = None, hang: bool = False) -> None:
    """``gate``: the sync step waits for it instead of taking ``STEP_SECONDS``;
    ``hang``: the async step never returns (in this "process")."""

    def work(what: str) -> str:
        calls.hit(f"start {what}")
        if gate is None:
            time.sleep(STEP_SECONDS)
        else:
            gate.wait(30)
        calls.hit(f"end {what}")
        return what

    async def waiting(what: str) -> str:
        calls.hit(f"start {what}")
        if hang:
            await asyncio.Event().wait()
        calls.hit(f"end {what}")
        return what

    def undo(what: str) -> None:
        calls.hit(f"undo {what}")

    @app.workflow("slow")
    async def slow(ctx: cf.Context, compensated: bool) -> list[str]:
        done = await ctx.step("work", work, "work", compensate=undo if compensated else None)
        return [done, await ctx.step("after", calls.hit, "after")]

    @app.workflow("mixed")
    async def mixed(ctx: cf.Context, _: Any) -> list[str]:
        done: list[str] = await ctx.gather(ctx.step("work", work, "work"), ctx.step("wait", waiting, "wait"))
        return done


def lease_of(app: cf.Chainflow, run_id: str) -> tuple[str, str | None]:
    with app.engine.begin() as conn:
        row = conn.execute(sa.select(runs.c.status, runs.c.lease_owner).where(runs.c.id == run_id)).one()
    return row.status, row.lease_owner


def recoveries(app: cf.Chainflow, run_id: str) -> int:
    with app.engine.begin() as conn:
        return int(conn.execute(sa.select(runs.c.recoveries).where(runs.c.id == run_id)).scalar_one())


async def started(app: cf.Chainflow, calls: Any, what: str = "work", **options: Any) -> Any:
    worker = app.worker(poll_interval=0.02, **options)
    await worker.start()
    await worker.poll()
    await wait_until(lambda: calls.count(f"start {what}") == 1, what=f"step {what!r} to start")
    return worker


@pytest.mark.parametrize("compensated", [True, False], ids=["compensated", "plain"])
async def test_a_stopping_worker_keeps_the_lease_while_a_sync_step_finishes_and_journals_it(
        make_app: Any, calls: Any, compensated: bool) -> None:
    """Another worker polls all along: it must neither take the run over while the
    first one waits (the lease lapsing) nor get it before the step's thread is done."""
    first, second = make_app(lease_seconds=0.5), make_app(lease_seconds=0.5)
    register(first, calls)
    register(second, calls)
    run_id = first.start("slow", compensated).id
    worker = await started(first, calls)
    async with running_worker(second):
        t0 = time.monotonic()
        await worker.close()
        took = time.monotonic() - t0
        assert calls.lines()[:2] == ["start work", "end work"]  # waited for, not cut off
        assert worker.outcomes[run_id].detail == "released"
        st = await wait_status(second, run_id)
    assert st.status == "completed", st.error
    assert st.output == ["work", None]
    assert calls.lines() == ["start work", "end work", "after"]  # the step ran once
    assert [k for _, k, _ in live_keys(second, run_id)] == ["work", "after"]
    assert recoveries(second, run_id) == 0  # handed back, never taken over from a lapsed lease
    assert claim_count(second, run_id) == 2
    assert took < 10  # the step's end, not the grace period (25 s)


async def test_a_stopping_worker_cuts_an_async_step_off_and_waits_only_for_the_thread(
        make_app: Any, calls: Any) -> None:
    first = make_app()
    register(first, calls, hang=True)
    run_id = first.start("mixed").id
    worker = await started(first, calls, "wait")
    await worker.close()
    assert lease_of(first, run_id) == ("pending", None)
    assert [k for _, k, _ in live_keys(first, run_id)] == ["work"]

    second = make_app()
    register(second, calls)
    async with running_worker(second):
        st = await wait_status(second, run_id)
    assert st.status == "completed" and st.output == ["work", "wait"], st.error
    assert calls.count("start work") == 1 and calls.count("start wait") == 2


@pytest.mark.parametrize("how", ["grace", "hurry"])
async def test_a_worker_stops_waiting_at_its_grace_or_when_hurried_and_leaves_the_run_leased(
        make_app: Any, calls: Any, caplog: pytest.LogCaptureFixture, how: str) -> None:
    """Releasing the run would let another worker start the step while its thread
    still runs here: the run stays leased, and is taken over once the lease expires."""
    app = make_app(lease_seconds=30)
    gate = threading.Event()
    register(app, calls, gate)
    run_id = app.start("slow", True).id
    worker = await started(app, calls, shutdown_grace=0.3 if how == "grace" else 60)
    try:
        with caplog.at_level(logging.WARNING, logger="chainflow.worker"):
            closing = asyncio.create_task(worker.close())
            if how == "hurry":
                await asyncio.sleep(0.2)
                worker.hurry()
            await asyncio.wait_for(closing, 10)
        assert lease_of(app, run_id) == ("running", worker.id)
        assert live_keys(app, run_id) == []
        assert run_id in caplog.text and "left leased" in caplog.text
    finally:
        gate.set()
    await wait_until(lambda: calls.count("end work") == 1, what="the thread to end")
    assert lease_of(app, run_id) == ("running", worker.id)  # its late result was not written


async def test_a_stopping_worker_keeps_a_run_whose_timed_out_step_thread_still_runs(
        make_app: Any, calls: Any) -> None:
    """A timeout gave up on the attempt, not its thread: released, the run's retry could
    start on another worker beside that thread, so the run stays leased like a thread
    still awaited."""
    app = make_app(lease_seconds=30)
    gate = threading.Event()

    def work() -> str:
        calls.hit("start work")
        gate.wait(30)
        calls.hit("end work")
        return "work"

    @app.workflow("timed")
    async def timed(ctx: cf.Context, _: Any) -> str:
        return str(await ctx.step("work", work, timeout=0.2, retry=cf.Retry(max_attempts=2, initial=0.01)))

    run_id = app.start("timed").id
    worker = await started(app, calls, shutdown_grace=0.5)
    try:
        await asyncio.sleep(0.4)  # the first attempt timed out; the retry waits for its thread
        await asyncio.wait_for(worker.close(), 10)
        assert lease_of(app, run_id) == ("running", worker.id)
    finally:
        gate.set()
    await wait_until(lambda: calls.count("end work") == 1, what="the thread to end")
    assert calls.count("start work") == 1


def test_the_worker_command_documents_its_shutdown_grace() -> None:
    from click.testing import CliRunner

    from chainflow.cli import cli

    out = CliRunner().invoke(cli, ["worker", "--help"]).output
    assert "--shutdown-grace" in out and "second SIGINT/SIGTERM" in " ".join(out.split())


# --- a real `chainflow worker` process and real signals ------------------------------

ROOT = Path(__file__).resolve().parents[2]


def spawn(db_url: str, tmp: Path, *options: str, **env: str) -> subprocess.Popen[bytes]:
    """``chainflow worker`` on ``crash_app``'s workflows, its output in ``tmp/worker.log``."""
    full = dict(os.environ, CF_URL=db_url, CF_EFFECTS=str(tmp / "effects.log"), **env)
    with open(tmp / "worker.log", "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "chainflow", "worker", "tests.engine.crash_app:app",
                                 "--concurrency", "2", *options], env=full, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)


def stand_in(db_url: str) -> cf.Chainflow:
    """Starts runs of ``crash_app``'s ``long`` (this process runs no worker)."""
    app = cf.Chainflow(db_url)

    @app.workflow("long")
    async def long(ctx: cf.Context, _: Any) -> None:  # pragma: no cover
        raise AssertionError("the test process runs no worker")

    return app


def wait_for(what: Any, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def effects(tmp: Path) -> list[str]:
    path = tmp / "effects.log"
    return [line.split()[1] for line in path.read_text().splitlines()] if path.exists() else []


def stopped(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sigterm_hands_a_run_back_once_its_sync_step_is_journaled(db_url: str, tmp_path: Path) -> None:
    app = stand_in(db_url)
    run_id = app.start("long").id
    worker = spawn(db_url, tmp_path, CF_LEASE="0.5", CF_STEP_SECONDS="1.5")
    try:
        wait_for(lambda: "work-start" in effects(tmp_path))
    finally:
        worker.send_signal(signal.SIGTERM)
    code = stopped(worker, 10)
    log = (tmp_path / "worker.log").read_text()
    assert code == 0, log
    assert effects(tmp_path) == ["work-start", "work-end"]
    assert [k for _, k, _ in live_keys(app, run_id)] == ["work"], log  # resumed from there, not repeated
    assert lease_of(app, run_id) == ("pending", None)
    assert recoveries(app, run_id) == 0  # its lease (0.5 s) never lapsed meanwhile
    assert "waiting up to 25s for 1 run(s) with a step running in a thread" in log


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_second_signal_stops_the_wait_and_leaves_the_run_leased(db_url: str, tmp_path: Path) -> None:
    app = stand_in(db_url)
    run_id = app.start("long").id
    worker = spawn(db_url, tmp_path, "--shutdown-grace", "60", CF_LEASE="30", CF_STEP_SECONDS="60")
    try:
        wait_for(lambda: "work-start" in effects(tmp_path))
        worker.send_signal(signal.SIGINT)
        wait_for(lambda: "waiting up to 60s" in (tmp_path / "worker.log").read_text())
    finally:
        worker.send_signal(signal.SIGTERM)
    code = stopped(worker, 10)
    log = (tmp_path / "worker.log").read_text()
    assert code == 0, log
    status, owner = lease_of(app, run_id)
    assert status == "running" and owner is not None, log  # expires on its own, as after a crash
    assert live_keys(app, run_id) == []
    assert "left leased" in log and run_id in log
