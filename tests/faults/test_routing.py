"""Routing: a worker claims only runs of workflows it registers, and a run that no live
worker can take says so (``RunStatus.unserved``, ``chainflow show``/``runs``).

Two services with disjoint workflows share one database.  Before the fix a worker
claimed the other service's runs, logged "not registered" and held them for a whole
lease, so with a 30 s lease most runs took 30 s instead of a few poll intervals.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

import chainflow as cf
import chainflow.cli
from chainflow.cli import cli

from ..engine._util import running_worker, wait_until

pytestmark = pytest.mark.timeout(60)

LONG_LEASE = 30.0  # a run held by the wrong worker would wait this long
POLL = 0.05
RUNS_EACH = 20


def _service(url: str, *names: str) -> cf.Chainflow:
    """An app registering ``names``, each echoing its input."""
    app = cf.Chainflow(url, lease_seconds=LONG_LEASE)
    for name in names:
        async def echo(ctx: cf.Context, n: int) -> int:
            return await ctx.step("echo", lambda: n)

        app.workflow(name)(echo)
    return app


def _parked_service(url: str, *names: str) -> cf.Chainflow:
    """An app whose workflows wait for a signal: their runs stay unfinished."""
    app = cf.Chainflow(url, lease_seconds=LONG_LEASE)
    for name in names:
        async def park(ctx: cf.Context, _: Any) -> Any:
            return await ctx.wait_for("go")

        app.workflow(name)(park)
    return app


async def test_disjoint_services_each_run_only_their_own_runs_at_once(db_url: str) -> None:
    alpha, beta = _service(db_url, "alpha"), _service(db_url, "beta")
    client = _service(db_url, "alpha", "beta")  # starts runs, executes none
    ids = {name: [client.start(name, i).id for i in range(RUNS_EACH)] for name in ("alpha", "beta")}
    started = time.monotonic()
    # each worker has room for every run: an unfiltered claim takes the other service's too
    async with running_worker(alpha, concurrency=64, poll_interval=POLL), \
            running_worker(beta, concurrency=64, poll_interval=POLL):
        await wait_until(lambda: all(st.done for st in client.runs(limit=100)) and len(client.runs(limit=100)) == 40,
                         timeout=LONG_LEASE + 10, what="every run to finish")
        elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"runs took {elapsed:.1f}s: a worker held runs it cannot execute for its lease"
    for name, run_ids in ids.items():
        for i, run_id in enumerate(run_ids):
            st = client.status(run_id)
            assert (st.status, st.output) == ("completed", i)
    for app in (alpha, beta, client):
        app.engine.dispose()


@pytest.fixture
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """CliRunner is no terminal: rich would wrap the lines asserted on at 80 columns."""
    monkeypatch.setattr(chainflow.cli, "console", Console(width=250, no_color=True))


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


async def test_a_run_no_live_worker_serves_stays_pending_and_says_so(db_url: str, wide_console: None) -> None:
    alpha = _parked_service(db_url, "alpha")
    client = _parked_service(db_url, "alpha", "gamma")
    orphan = client.start("gamma").id  # nobody runs gamma
    served = client.start("alpha").id
    async with running_worker(alpha, poll_interval=POLL):
        await wait_until(lambda: client.status(served).status == "waiting", what="alpha's run to park")
        await asyncio.sleep(10 * POLL)  # many polls: the gamma run is not claimed by anyone
        st = client.status(orphan)
        assert (st.status, st.unserved) == ("pending", True)
        assert client.status(served).unserved is False  # parked on a signal, but alpha is served

        res = await asyncio.to_thread(_cli, "--database-url", db_url, "show", orphan)
        assert res.exit_code == 0, res.output
        assert "no live worker serves workflow 'gamma': this run stays pending" in res.output
        res = await asyncio.to_thread(_cli, "--database-url", db_url, "show", served)
        assert "no live worker serves" not in res.output

        res = await asyncio.to_thread(_cli, "--database-url", db_url, "runs")
        rows = {run_id: next(line for line in res.output.splitlines() if run_id in line) for run_id in (orphan, served)}
        assert "pending (no live worker serves it)" in rows[orphan]
        assert "no live worker" not in rows[served]
    # a worker that closes cleanly withdraws at once (no wait for its announcement to expire)
    assert client.status(served).unserved is True
    res = await asyncio.to_thread(_cli, "--database-url", db_url, "show", served)
    assert "no live worker serves workflow 'alpha': this run stays waiting" in res.output
    for app in (alpha, client):
        app.engine.dispose()
