"""Poison runs: a run that kills its worker (or crashes its executor) every time is not
re-claimed forever.  Each take-over after an expired lease (or a crash) counts as a
recovery; past ``max_recoveries`` the run ends ``dead_lettered`` with the reason,
without running its compensations, listed by ``chainflow runs --status dead_lettered``
and put back to pending by ``chainflow retry``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from rich.console import Console

import chainflow as cf
import chainflow.cli
from chainflow.cli import cli
from chainflow.runtime import executor
from chainflow.storage import store
from chainflow.storage.schema import runs
from chainflow.testing import CallLog

from ..engine._util import running_worker, wait_status

APP = Path(__file__).with_name("poison_app.py")
MAX_RECOVERIES = 3
LEASE = 1.0


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """CliRunner is no terminal: rich would wrap the lines asserted on at 80 columns."""
    monkeypatch.setattr(chainflow.cli, "console", Console(width=250, no_color=True))


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _recoveries(app: cf.Chainflow, run_id: str) -> int:
    with app.engine.begin() as conn:
        return int(conn.execute(sa.select(runs.c.recoveries).where(runs.c.id == run_id)).scalar_one())


class Workers:
    """poison_app.py processes, one at a time, respawned when the poison kills one."""

    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.tmp = url, tmp
        self.effects = CallLog(tmp / "effects.log")
        self.spawned: list[subprocess.Popen[bytes]] = []

    def spawn(self, **env: str) -> subprocess.Popen[bytes]:
        full = dict(os.environ, CF_URL=self.url, CF_EFFECTS=str(self.effects.path), CF_LEASE=str(LEASE),
                    CF_MAX_RECOVERIES=str(MAX_RECOVERIES), **env)
        with open(self.tmp / f"worker{len(self.spawned)}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, str(APP)], env=full, stdout=log, stderr=subprocess.STDOUT)
        self.spawned.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.spawned:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # a clean close: hands runs back, retires
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(self.tmp.glob("worker*.log")))


@pytest.mark.timeout(120)
def test_a_run_that_kills_its_worker_every_time_is_dead_lettered(db_url: str, tmp_path: Path) -> None:
    client = cf.Chainflow(db_url)

    @client.workflow("poison")
    async def poison(ctx: cf.Context, _: object) -> None:  # the client only starts it
        return None

    run_id = client.start("poison").id
    workers = Workers(db_url, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while client.status(run_id).status != "dead_lettered":
            assert time.monotonic() < deadline, f"never dead-lettered: {client.status(run_id)}\n{workers.logs()}"
            if not workers.spawned or workers.spawned[-1].poll() is not None:
                workers.spawn()
            time.sleep(0.05)
        killed = [p.returncode for p in workers.spawned if p.poll() is not None]
        explosions = workers.effects.lines()
        st = client.status(run_id)
        recoveries = _recoveries(client, run_id)
    finally:
        workers.stop()

    # one execution, then one per allowed recovery, each killed by the poison
    assert [line.split()[1] for line in explosions].count("explode") == MAX_RECOVERIES + 1, explosions
    assert killed.count(-signal.SIGKILL) == MAX_RECOVERIES + 1, killed
    assert recoveries == MAX_RECOVERIES + 1
    assert st.done and st.error is not None
    assert st.error["type"] == "chainflow.errors.RunDeadLettered"
    assert f"after {MAX_RECOVERIES + 1} recoveries (max_recoveries={MAX_RECOVERIES})" in st.error["message"]
    assert "died or lost its lease" in st.error["message"]
    # its compensations were not run: no journal row, no side effect
    assert not any(e.kind == "compensation" for e in client.journal(run_id))
    assert not any("compensate" in line for line in workers.effects.lines())
    assert st.compensations == {}

    # the end is final for everything but an operator's retry
    assert asyncio.run(client.await_run(run_id, timeout=5)).status == "dead_lettered"
    for refused in (lambda: client.signal(run_id, "go"), lambda: client.cancel(run_id)):
        with pytest.raises(cf.RunFinishedError, match="dead_lettered"):
            refused()

    listed = _cli("--database-url", db_url, "runs", "--status", "dead_lettered")
    assert listed.exit_code == 0 and run_id in listed.output and "dead_lettered" in listed.output, listed.output
    shown = _cli("--database-url", db_url, "show", run_id)
    assert "RunDeadLettered" in shown.output and "max_recoveries=3" in shown.output, shown.output
    assert f"dead-lettered: its compensations were not run; `chainflow retry {run_id}`" in shown.output

    retried = _cli("--database-url", db_url, "retry", run_id)
    assert retried.exit_code == 0 and "pending again" in retried.output, retried.output
    st = client.status(run_id)
    assert (st.status, st.error, _recoveries(client, run_id)) == ("pending", None, 0)
    again = _cli("--database-url", db_url, "retry", run_id)
    assert again.exit_code == 1
    assert again.output.strip().splitlines() == [
        f"error: cannot retry run {run_id!r}: it is pending, and only a dead_lettered run can be retried"]

    # with the bug fixed, the retried run resumes from its journal: reserve is not run again
    workers = Workers(db_url, tmp_path)
    workers.spawn(CF_FIXED="1")
    try:
        final = client.wait(run_id, timeout=30)
    finally:
        workers.stop()
    assert (final.status, final.output) == ("completed", "survived")
    assert [line.split()[1] for line in workers.effects.lines()].count("reserve") == 1
    client.engine.dispose()


async def test_an_executor_that_crashes_every_time_is_dead_lettered_with_the_crash(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = cf.Chainflow(db_url, max_recoveries=2, lease_seconds=0.3)
    undone: list[str] = []

    @app.workflow("doomed")
    async def doomed(ctx: cf.Context, _: object) -> str:
        await ctx.step("reserve", lambda: "r", compensate=lambda _: undone.append("reserve"))
        return "unreachable"

    async def crash(self: executor.Execution, ctx: Any, main: Any) -> executor.Outcome:
        raise RuntimeError("executor bug")

    monkeypatch.setattr(executor.Execution, "_conclude", crash)
    run_id = app.start("doomed").id
    async with running_worker(app, poll_interval=0.02):
        st = await wait_status(app, run_id, store.TERMINAL, timeout=15)
    assert st.status == "dead_lettered", st
    assert st.error is not None and "after 3 recoveries (max_recoveries=2)" in st.error["message"]
    assert "its executor crashed (RuntimeError: executor bug)" in st.error["message"]
    assert "RuntimeError: executor bug" in st.error["traceback"]  # the crash's own traceback
    assert undone == [] and _recoveries(app, run_id) == 3
    app.engine.dispose()


async def test_resuming_after_sleeps_and_signals_is_not_a_recovery(db_url: str) -> None:
    app = cf.Chainflow(db_url, max_recoveries=0)  # a single recovery would dead-letter it

    @app.workflow("patient")
    async def patient(ctx: cf.Context, _: object) -> Any:
        for i in range(3):
            await ctx.sleep(f"nap{i}", 0.05)
        return await ctx.wait_for("go")

    run_id = app.start("patient").id
    async with running_worker(app, poll_interval=0.02, inline_wait=0.0):
        await wait_status(app, run_id, ("waiting",))
        app.signal(run_id, "go", "done")
        st = await wait_status(app, run_id)
    assert (st.status, st.output) == ("completed", "done")
    assert _recoveries(app, run_id) == 0
    app.engine.dispose()


@pytest.mark.parametrize("value, error", [(-1, ValueError), ("3", TypeError), (True, TypeError), (2.5, TypeError)])
def test_max_recoveries_is_validated(tmp_path: Path, value: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match=rf"max_recoveries must be .*got {value!r}"):
        cf.Chainflow(f"sqlite:///{tmp_path / 'x.db'}", max_recoveries=value)


def test_retry_refuses_unknown_and_live_runs(tmp_path: Path) -> None:
    app = cf.Chainflow(f"sqlite:///{tmp_path / 'x.db'}")

    @app.workflow("w")
    async def w(ctx: cf.Context, _: object) -> None:
        return None

    with pytest.raises(cf.RunNotFoundError):
        app.retry("ghost")
    run_id = app.start("w").id
    with pytest.raises(cf.RunNotDeadLetteredError, match="it is pending, and only a dead_lettered run"):
        app.retry(run_id)
    app.engine.dispose()
