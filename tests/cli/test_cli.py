"""The CLI against a real SQLite file: listing, timeline, one-line errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner

import chainflow as cf
from chainflow.cli import cli
from chainflow.testing import WorkflowTester


@pytest.fixture()
def finished_run(tmp_path: Path) -> tuple[str, str]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    app = cf.Chainflow(url, clock=cf.FakeClock())
    calls = {"n": 0}

    def flaky() -> dict[str, int]:
        calls["n"] += 1
        if calls["n"] < 2:
            raise ValueError("transient glitch")
        return {"id": 7}

    def boom() -> None:
        raise RuntimeError("ledger closed")

    @app.workflow("onboard")
    async def onboard(ctx: cf.Context, _: object) -> None:
        await ctx.step("create", flaky, retry=cf.Retry(initial=1), compensate=lambda acct: None)
        await ctx.step("post", boom, retry=cf.Retry(max_attempts=1))

    run = asyncio.run(WorkflowTester(app).run("onboard", None))
    app.engine.dispose()
    return url, run.run.id


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    import chainflow.cli

    monkeypatch.setattr(chainflow.cli, "console", Console(width=250))


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_runs_lists_the_run(finished_run: tuple[str, str]) -> None:
    url, run_id = finished_run
    code, out, _ = invoke("--database-url", url, "runs", "--status", "failed")
    assert code == 0
    assert run_id[:8] in out and "onboard" in out


def test_show_prints_timeline_with_attempts_and_compensation(finished_run: tuple[str, str]) -> None:
    url, run_id = finished_run
    code, out, _ = invoke("--database-url", url, "show", run_id)
    assert code == 0
    for needle in ("create", "transient glitch", "ledger closed", "compensat", "failed"):
        assert needle in out


@pytest.mark.parametrize("command", [["cancel"], ["signal", "", "approval"]])
def test_finished_run_is_a_one_line_error(finished_run: tuple[str, str], command: list[str]) -> None:
    url, run_id = finished_run
    args = [c or run_id for c in command]
    if command[0] == "cancel":
        args = ["cancel", run_id]
    code, _, err = invoke("--database-url", url, *args)
    assert code == 1
    assert err.strip().startswith("error:") and "already failed" in err and len(err.strip().splitlines()) == 1


def test_unknown_run(finished_run: tuple[str, str]) -> None:
    url, _ = finished_run
    code, _, err = invoke("--database-url", url, "show", "no-such-run")
    assert code == 1 and "no-such-run" in err


def test_malformed_database_url_names_it() -> None:
    code, _, err = invoke("--database-url", "mysql+nothing://x", "runs")
    assert code == 1 and "mysql+nothing://x" in err


def test_bad_app_path() -> None:
    code, _, err = invoke("worker", "no_such_module_xyz:app")
    assert code == 1 and "no_such_module_xyz" in err
    code, _, err = invoke("worker", "missing-colon")
    assert code == 1 and "module:attribute" in err


def test_bad_signal_payload(finished_run: tuple[str, str]) -> None:
    url, run_id = finished_run
    code, _, err = invoke("--database-url", url, "signal", run_id, "approval", "--payload", "{oops")
    assert code == 1 and "--payload" in err
