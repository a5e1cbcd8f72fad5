"""``chainflow replay / fork / export``: exit codes a CI gate relies on, JSON, tables,
one-line errors for bad options before anything runs."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

import chainflow as cf
import chainflow.cli
from chainflow.cli import CHANGED_EXIT, cli
from chainflow.testing import WorkflowTester

from . import _flows


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chainflow.cli, "console", Console(width=250, no_color=True))
    monkeypatch.delenv("CHAINFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("CHAINFLOW_APP", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """An app module in the working directory and one completed and one failed run."""
    url = f"sqlite:///{tmp_path / 'prod.db'}"
    # a module name of its own: load_app imports it, and sys.modules outlives the test
    name = f"payapp_{tmp_path.name}".replace("-", "_")
    monkeypatch.setenv("CHAINFLOW_APP", f"{name}:app")
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        import chainflow as cf
        from tests.replay import _flows
        app = cf.Chainflow({url!r}, clock=cf.FakeClock(), default_retry=cf.Retry(max_attempts=1))
        app.workflow("payment")(_flows.payment)
        app.workflow("broken")(_flows.payment_on_broken_ledger)
    """))
    monkeypatch.chdir(tmp_path)
    app = cf.Chainflow(url, clock=cf.FakeClock(), default_retry=cf.Retry(max_attempts=1))
    app.workflow("payment")(_flows.payment)
    app.workflow("broken")(_flows.payment_on_broken_ledger)

    async def record() -> tuple[str, str]:
        tester = WorkflowTester(app)
        ok, bad = (await app.astart("payment", "o-1")).id, (await app.astart("broken", "o-2")).id
        await tester.run_until_idle()
        for run_id in (ok, bad):
            await app.asignal(run_id, "approve", "yes")
        await tester.run_until_idle()
        return ok, bad

    ids = asyncio.run(record())
    app.engine.dispose()
    return ids


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)  # the app: $CHAINFLOW_APP


def test_replay_exit_codes_table_and_json(recorded: tuple[str, str]) -> None:
    ok, _ = recorded
    same = invoke("replay", ok)
    assert same.exit_code == 0, same.output
    assert "unchanged" in same.stdout and "credit-ledger" in same.stdout

    swap = ["--override", "credit-ledger=tests.replay._flows:ledger_with_fee", "--pure", "credit-ledger"]
    changed = invoke("replay", ok, *swap)
    assert changed.exit_code == CHANGED_EXIT
    assert "output_changed" in changed.stdout and ".credited changed" in changed.stdout
    assert invoke("replay", ok, *swap, "--allow-changes").exit_code == 0

    as_json = invoke("replay", ok, *swap, "--json")
    data = json.loads(as_json.stdout)
    assert data["changed"] is True
    assert [s["change"] for s in data["steps"] if s["step"] == "credit-ledger"] == ["output_changed"]

    effectful = invoke("replay", ok, "--override", "credit-ledger=tests.replay._flows:ledger_with_fee")
    assert effectful.exit_code == CHANGED_EXIT and "would run: credit-ledger(" in effectful.stdout


def test_sweep_summary_groups_by_change(recorded: tuple[str, str]) -> None:
    res = invoke("replay", "--workflow-name", "payment", "--since", "3650d", "--sample", "5",
                 "--override", "credit-ledger=tests.replay._flows:ledger_with_fee", "--pure", "credit-ledger")
    assert res.exit_code == CHANGED_EXIT, res.output
    assert "1 run(s) replayed: 1 changed" in res.stdout and "output_changed" in res.stdout


@pytest.mark.parametrize(("args", "needle"), [
    (["replay"], "give RUN, or select runs"),
    (["replay", "x", "--status", "failed"], "not both"),
    (["replay", "x", "--override", "credit-ledger"], "STEP=MODULE:FUNCTION"),
    (["replay", "x", "--since", "yesterday"], "neither a span"),
    (["replay", "x", "--sample", "3"], "--sample selects among runs"),
    (["fork", "x"], "exactly one fork point"),
    (["replay", "--workflow-name", "broken", "--since", "99999999999d"], "Invalid value for '--since'"),
    (["fork", "x", "--after", "2026-01-01T00:00"], "Invalid value for '--after': '2026-01-01T00:00' has no time zone"),
])
def test_bad_options_are_refused_before_anything_runs(recorded: tuple[str, str], args: list[str],
                                                      needle: str) -> None:
    res = invoke(*args)
    assert res.exit_code == 2 and needle in res.output


def test_export_and_fork(recorded: tuple[str, str], tmp_path: Path) -> None:
    ok, bad = recorded
    exported = CliRunner().invoke(cli, ["--database-url", f"sqlite:///{tmp_path / 'prod.db'}", "export", ok])
    assert exported.exit_code == 0
    assert json.loads(exported.stdout)["run"]["id"] == ok

    unknown = invoke("replay", "no-such-run")
    assert unknown.exit_code == 1 and "no-such-run" in unknown.output

    forked = invoke("fork", bad, "--from-failed", "--override", "credit-ledger=tests.replay._flows:ledger")
    assert forked.exit_code == 0, forked.output
    new_id = forked.stdout.strip()
    app = cf.Chainflow(f"sqlite:///{tmp_path / 'prod.db'}")
    assert app.status(new_id).workflow == "broken"
    assert [e.key for e in app.journal(new_id)] == ["reserve", "now", "uuid", "settle", "approve"]
    bulk = invoke("fork", "--workflow-name", "broken", "--status", "failed", "--from-failed")
    assert bulk.exit_code == 0 and "0 fork(s) created, 1 run(s) skipped" in bulk.stderr
    app.engine.dispose()
