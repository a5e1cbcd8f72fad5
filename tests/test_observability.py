"""Observability: the metrics endpoint scraped over HTTP and parsed, JSON log lines
parsed, lifecycle hooks fired by real runs and a real tracker, the stuck-chain alert,
and a ``chainflow worker`` process with all of it that shuts down gracefully."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

import chainflow as cf
from chainflow.chain.tracker import Tracker
from chainflow.logs import configure
from chainflow.storage.gauges import serve
from chainflow.storage.schema import runs
from chainflow.testing import FakeUtxoAdapter, FakeUtxoChain, WorkflowTester

ROOT = Path(__file__).resolve().parent.parent


def quick_app(url: str, clock: cf.Clock | None = None) -> cf.Chainflow:
    """Three workflows: one that retries a step once, one that fails and compensates,
    one that waits for a signal."""
    app = cf.Chainflow(url, clock=clock or cf.FakeClock(),
                       default_retry=cf.Retry(max_attempts=2, initial=0.001, jitter=0))
    tries: dict[str, int] = {}

    def flaky(name: str) -> str:
        tries[name] = tries.get(name, 0) + 1
        if tries[name] == 1:
            raise ConnectionError("node timed out")
        return "ok"

    def broken() -> None:
        raise ValueError("ledger refused the credit")

    @app.workflow("obs_flaky")
    async def obs_flaky(ctx: cf.Context, name: str) -> str:
        return await ctx.step("call", flaky, name)

    @app.workflow("obs_broken")
    async def obs_broken(ctx: cf.Context, _: Any) -> None:
        await ctx.step("reserve", lambda: 1, compensate=lambda _: None)
        await ctx.step("credit", broken, retry=cf.Retry(max_attempts=1))

    @app.workflow("obs_waits")
    async def obs_waits(ctx: cf.Context, _: Any) -> Any:
        return await ctx.wait_for("go")

    return app


MetricKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)


def scrape(port: int) -> dict[MetricKey, float]:
    """{(sample name, sorted labels): value} from GET /metrics, parsed by prometheus_client."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_endpoint_serves_process_series_and_database_gauges(tmp_path: Path) -> None:
    app = quick_app(f"sqlite:///{tmp_path}/m.db")
    tester = WorkflowTester(app)

    async def scenario() -> None:
        assert (await tester.run("obs_flaky", "a")).status == "completed"
        assert (await tester.run("obs_broken", None)).status == "failed"
        await app.astart("obs_waits", None)
        await tester.run_until_idle()

    asyncio.run(scenario())
    server, _ = serve(app.database, 0, "127.0.0.1")
    try:
        got = scrape(server.server_port)
    finally:
        server.shutdown()
        app.engine.dispose()
    wf = lambda name, **more: tuple(sorted({"workflow": name, **more}.items()))  # noqa: E731
    assert got[("chainflow_runs_started_total", wf("obs_flaky"))] >= 1
    assert got[("chainflow_runs_finished_total", wf("obs_flaky", status="completed"))] >= 1
    assert got[("chainflow_runs_finished_total", wf("obs_broken", status="failed"))] >= 1
    assert got[("chainflow_runs_compensated_total", wf("obs_broken"))] >= 1
    assert got[("chainflow_step_attempts_total", wf("obs_flaky", outcome="retried"))] >= 1
    assert got[("chainflow_step_attempts_total", wf("obs_flaky", outcome="ok"))] >= 1
    assert got[("chainflow_step_failures_total", wf("obs_broken"))] >= 1
    assert got[("chainflow_run_duration_seconds_count", wf("obs_flaky", status="completed"))] >= 1
    assert got[("chainflow_step_duration_seconds_count", wf("obs_flaky", outcome="ok"))] >= 1
    # the database's view, as any process sees it
    assert got[("chainflow_runs", (("status", "completed"),))] == 1
    assert got[("chainflow_runs", (("status", "failed"),))] == 1
    assert got[("chainflow_active_runs", wf("obs_waits", status="waiting"))] == 1


def test_json_log_lines_carry_the_runs_fields(tmp_path: Path) -> None:
    out = io.StringIO()
    configure("json", "debug", stream=out)
    try:
        app = quick_app(f"sqlite:///{tmp_path}/l.db")
        tester = WorkflowTester(app)
        flaky = asyncio.run(tester.run("obs_flaky", "b"))
        broken = asyncio.run(tester.run("obs_broken", None))
        app.engine.dispose()
    finally:
        logging.getLogger("chainflow").handlers.clear()
        logging.getLogger("chainflow").propagate = True
    lines = [json.loads(line) for line in out.getvalue().splitlines()]  # every line is one JSON object
    events = [(e.get("message", "").split(" ")[0], e) for e in lines if e["logger"] == "chainflow.events"]
    mine = [(kind, e) for kind, e in events if e.get("run_id") in (flaky.run.id, broken.run.id)]
    kinds = [kind for kind, _ in mine]
    assert kinds.count("run_started") == 2
    retried = next(e for kind, e in mine if kind == "step_retried")
    assert retried["run_id"] == flaky.run.id and retried["workflow"] == "obs_flaky" and retried["step"] == "call"
    assert retried["attempt"] == 1 and retried["error"] == "ConnectionError: node timed out"
    assert retried["level"] == "info"
    failed = next(e for kind, e in mine if kind == "run_failed")
    assert failed["run_id"] == broken.run.id and failed["status"] == "failed" and failed["level"] == "warning"
    assert "StepError" in failed["error"] and "ledger refused the credit" in failed["error"]
    assert any(kind == "step_failed" and e["step"] == "credit" for kind, e in mine)
    assert any(kind == "run_compensated" and e["run_id"] == broken.run.id for kind, e in mine)
    done = next(e for kind, e in mine if kind == "run_completed")
    assert done["run_id"] == flaky.run.id and isinstance(done["duration"], float)
    assert all("traceback" not in json.dumps(e).lower() for _, e in mine)  # one line a change, no dumps


def test_hooks_fire_for_runs_and_steps_and_a_failing_hook_harms_nothing(tmp_path: Path) -> None:
    app = quick_app(f"sqlite:///{tmp_path}/h.db")
    heard: list[tuple[str, str | None, str | None]] = []

    @app.on("run_finished")
    def finished(e: cf.Event) -> None:
        heard.append((e.kind, e.workflow, e.status))

    @app.on("step_failed")
    async def step_failed(e: cf.Event) -> None:  # async hooks run as tasks
        heard.append((e.kind, e.step, e.error))

    @app.on("run_failed")
    def alert_is_broken(e: cf.Event) -> None:
        raise RuntimeError("pager down")

    tester = WorkflowTester(app)
    flaky = asyncio.run(tester.run("obs_flaky", "c"))
    broken = asyncio.run(tester.run("obs_broken", None))
    app.engine.dispose()
    assert flaky.status == "completed" and broken.status == "failed"  # the raising hook changed nothing
    assert ("run_completed", "obs_flaky", "completed") in heard
    assert ("run_failed", "obs_broken", "failed") in heard
    assert ("step_failed", "credit", "ValueError: ledger refused the credit") in heard
    with pytest.raises(ValueError, match="unknown event 'run_exploded'.*run_finished"):
        app.on("run_exploded")


def test_reorg_and_stalled_chain_hooks_from_a_real_tracker(tmp_path: Path) -> None:
    chain = FakeUtxoChain()
    chain.mine(6)
    clock = cf.FakeClock()
    adapter = FakeUtxoAdapter("fakebtc", chain)
    config = cf.TrackerConfig(poll_interval=0.02, start_depth=0, stall_after=600)
    app = cf.Chainflow(f"sqlite:///{tmp_path}/t.db", chains=[adapter], clock=clock, tracker=config)
    app.ensure_schema()
    heard: list[cf.Event] = []
    for kind in ("reorg_detected", "chain_stalled", "chain_resumed"):
        app.on(kind)(heard.append)
    tracker = Tracker(app.database, clock, adapter, "obs", config, app.events)

    async def until(kind: str) -> cf.Event:
        for _ in range(500):
            found = [e for e in heard if e.kind == kind]
            if found:
                return found[-1]
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {kind} event; heard {heard}")

    async def scenario() -> None:
        await tracker.step()
        chain.mine(3)
        await tracker.step()
        chain.reorg(2)
        await tracker.step()
        reorg = await until("reorg_detected")
        assert (reorg.chain, reorg.depth) == ("fakebtc", 2)
        stop = asyncio.Event()
        loop = asyncio.create_task(tracker.run(stop))
        try:
            await asyncio.sleep(0.1)
            assert not [e for e in heard if e.kind == "chain_stalled"]  # no time has passed
            clock.advance(601)
            stalled = await until("chain_stalled")
            assert stalled.chain == "fakebtc" and stalled.duration is not None and stalled.duration >= 600
            chain.mine()
            resumed = await until("chain_resumed")
            assert resumed.chain == "fakebtc"
        finally:
            stop.set()
            await loop
        assert [e.kind for e in heard].count("chain_stalled") == 1  # once, not every poll

    try:
        asyncio.run(scenario())
    finally:
        app.engine.dispose()
    from chainflow import metrics

    assert metrics.REGISTRY.get_sample_value("chainflow_chain_stalled", {"chain": "fakebtc"}) == 0
    reorgs = metrics.REGISTRY.get_sample_value("chainflow_reorg_depth_blocks_count", {"chain": "fakebtc"})
    assert reorgs is not None and reorgs >= 1


def test_stall_after_is_checked() -> None:
    with pytest.raises(ValueError, match="TrackerConfig.stall_after"):
        cf.TrackerConfig(stall_after=0)
    assert cf.TrackerConfig(stall_after=None).stall_after is None


# --- a real `chainflow worker` process ---------------------------------------------------

WORKER_APP = """
import asyncio
import chainflow as cf

app = cf.Chainflow({url!r}, default_retry=cf.Retry(max_attempts=3, initial=0.01, jitter=0))
seen = set()

def flaky(name):
    if name not in seen:
        seen.add(name)
        raise ConnectionError("node timed out")
    return name

@app.workflow("proc_flaky")
async def proc_flaky(ctx, name):
    return await ctx.step("call", flaky, name)

@app.workflow("proc_slow")
async def proc_slow(ctx, _):
    async def long():
        await asyncio.sleep(120)
    await ctx.step("long", long)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def worker_proc(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, cf.Chainflow]]:
    url = f"sqlite:///{tmp_path}/w.db"
    (tmp_path / "procapp.py").write_text(textwrap.dedent(WORKER_APP.format(url=url)))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "chainflow", "worker", "procapp:app", "--metrics-port", str(port),
         "--metrics-host", "127.0.0.1", "--log-format", "json", "--lease", "5"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = cf.Chainflow(url)
    client.ensure_schema()
    try:
        yield proc, port, client
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        client.engine.dispose()


def test_worker_process_metrics_json_logs_and_graceful_sigterm(worker_proc: Any) -> None:
    proc, port, client = worker_proc
    for name in ("proc_flaky", "proc_slow"):  # registered so the client can start them
        client.workflow(name)(_unused)
    done = client.start("proc_flaky", "x")
    slow = client.start("proc_slow", None)
    end = time.monotonic() + 60
    got: dict[MetricKey, float] = {}
    while time.monotonic() < end:
        try:
            got = scrape(port)
        except OSError:
            got = {}
        running = client.status(slow.id).status == "running"
        if got.get(("chainflow_runs_finished_total", (("status", "completed"), ("workflow", "proc_flaky")))) \
                and running:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    else:
        raise AssertionError(f"worker did not finish the run; scraped {sorted(got)[:20]}")
    assert got[("chainflow_step_attempts_total", (("outcome", "retried"), ("workflow", "proc_flaky")))] == 1
    assert got[("chainflow_active_runs", (("status", "running"), ("workflow", "proc_slow")))] == 1

    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    # graceful: the run in flight was handed back at once, not left to its lease
    with client.engine.connect() as conn:
        row = conn.execute(sa.select(runs.c.status, runs.c.lease_owner).where(runs.c.id == slow.id)).one()
    assert (row.status, row.lease_owner) == ("pending", None)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    messages = [e["message"] for e in lines]
    assert any(m.startswith("worker ") and " started: " in m for m in messages), messages
    assert any("stopping: handing back 1 run(s) in flight" in m for m in messages), messages
    assert any(m.endswith(" stopped") for m in messages), messages
    completed = next(e for e in lines if e["message"].startswith("run_completed"))
    assert completed["run_id"] == done.id and completed["workflow"] == "proc_flaky"
    claimed = [e for e in lines if e["message"].startswith("run_claimed")]
    assert {e["run_id"] for e in claimed} == {done.id, slow.id}


async def _unused(ctx: cf.Context, _: Any) -> None:  # a client-side stand-in for the worker's code
    raise AssertionError("never executed by the client")
