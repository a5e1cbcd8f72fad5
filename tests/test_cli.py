"""``chainflow`` CLI against a real SQLite file, plus the timeline renderer on its own.

The database is filled by really running workflows (``WorkflowTester``), so the CLI is
checked against the records the engine writes, not against hand-made rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

import chainflow as cf
import chainflow.cli
from chainflow.cli import cli, timeline
from chainflow.client.app import AttemptRecord, JournalEntry, RunStatus
from chainflow.runtime.schedules import Scheduler
from chainflow.storage import store
from chainflow.testing import WorkflowTester


@dataclass(frozen=True)
class Db:
    url: str
    failed_run: str  # retried step, failing step, compensation
    waiting_run: str  # parked on signal "approval"


@pytest.fixture()
def db(tmp_path: Path) -> Db:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    app = cf.Chainflow(url, clock=cf.FakeClock())
    calls = {"create": 0}

    def create_account() -> dict[str, int]:
        calls["create"] += 1
        if calls["create"] == 1:
            # brackets: a rich markup tag in user data must print literally, not crash
            raise ConnectionError("bank [/] timed out")
        return {"account": 7}

    def post_ledger() -> None:
        raise RuntimeError("ledger closed")

    def close_account(account: dict[str, int]) -> str:
        return f"closed {account['account']}"

    @app.workflow("onboard")
    async def onboard(ctx: cf.Context, _: object) -> None:
        await ctx.step("create", create_account, retry=cf.Retry(initial=1), compensate=close_account)
        await ctx.step("post", post_ledger, retry=cf.Retry(max_attempts=1))

    @app.workflow("approve")
    async def approve(ctx: cf.Context, _: object) -> Any:
        return await ctx.wait_for("approval")

    tester = WorkflowTester(app)
    failed = asyncio.run(tester.run("onboard", None))
    assert failed.status == "failed"  # the fixture itself must produce what the tests read
    waiting = app.start("approve", None)
    asyncio.run(tester.run_until_idle())
    app.engine.dispose()
    return Db(url, failed.run.id, waiting.id)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """CliRunner is no terminal, so rich would use 80 columns and wrap the cells asserted on."""
    monkeypatch.setattr(chainflow.cli, "console", Console(width=250, no_color=True))


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAINFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("CHAINFLOW_APP", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_app prepends the cwd


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


def invoke(*args: str) -> Outcome:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return Outcome(result.exit_code, result.stdout, result.stderr)


def assert_one_line_error(res: Outcome, *needles: str) -> None:
    assert res.code == 1, (res.out, res.err)
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.err
    assert "Traceback" not in res.err + res.out
    for needle in needles:
        assert needle in lines[0]


# --- runs -------------------------------------------------------------------------------


def test_runs_lists_every_run_with_full_ids(db: Db) -> None:
    res = invoke("--database-url", db.url, "runs")
    assert res.code == 0, res.err
    assert db.failed_run in res.out and db.waiting_run in res.out
    waiting_line = next(line for line in res.out.splitlines() if db.waiting_run in line)
    assert "approve" in waiting_line and "waiting" in waiting_line and "signal approval" in waiting_line


def test_runs_filters_by_status_and_workflow(db: Db) -> None:
    res = invoke("--database-url", db.url, "runs", "--status", "failed")
    assert res.code == 0 and db.failed_run in res.out and db.waiting_run not in res.out
    res = invoke("--database-url", db.url, "runs", "--workflow", "approve", "--limit", "1")
    assert res.code == 0 and db.waiting_run in res.out and db.failed_run not in res.out
    res = invoke("--database-url", db.url, "runs", "--workflow", "nothing-like-it")
    assert res.code == 0 and "no runs match" in res.out


def test_runs_reads_the_url_from_the_environment(db: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAINFLOW_DATABASE_URL", db.url)
    res = invoke("runs")
    assert res.code == 0 and db.failed_run in res.out


def test_unknown_status_is_a_usage_error(db: Db) -> None:
    assert invoke("--database-url", db.url, "runs", "--status", "bogus").code == 2


def test_status_choices_are_the_run_states(db: Db) -> None:
    """Every RunState is accepted (in any case) and none other: the CLI cannot drift
    from the states the engine stores."""
    for state in cf.RunState:
        res = invoke("--database-url", db.url, "runs", "--status", state.value.upper())
        assert res.code == 0, (state, res.err)
        assert (db.failed_run in res.out) == (state is cf.RunState.FAILED), (state, res.out)
        assert (db.waiting_run in res.out) == (state is cf.RunState.WAITING), (state, res.out)
    usage = CliRunner().invoke(cli, ["--database-url", db.url, "runs", "--status", "done"])
    assert usage.exit_code == 2
    assert f"'done' is not one of {', '.join(repr(s.value) for s in cf.RunState)}" in usage.stderr, usage.stderr


# --- show -------------------------------------------------------------------------------


def test_show_timeline_of_a_failed_run_with_retry_and_compensation(db: Db) -> None:
    res = invoke("--database-url", db.url, "show", db.failed_run)
    assert res.code == 0, res.err
    lines = res.out.splitlines()

    def line_with(*needles: str) -> str:
        return next(line for line in lines if all(n in line for n in needles))

    create = line_with("create", "step")
    assert " ok " in create and '{"account":7}' in create and " 2 " in create  # two tries
    retry = line_with("attempt 1")
    assert "retried" in retry and "ConnectionError: bank [/] timed out" in retry and "retry after" in retry
    post = line_with("post", "step")
    assert "error" in post and "RuntimeError: ledger closed" in post
    comp = line_with("compensate:create")
    assert "compensation" in comp and "closed 7" in comp
    # journal order: the retried step, the failing one, then its undo
    assert lines.index(create) < lines.index(retry) < lines.index(post) < lines.index(comp)
    assert "status failed" in res.out
    assert "StepError" in res.out and "ledger closed" in res.out
    assert "compensations: 1 ran, 0 failed" in res.out


def test_show_waiting_run_says_what_it_waits_for(db: Db) -> None:
    res = invoke("--database-url", db.url, "show", db.waiting_run)
    assert res.code == 0, res.err
    assert "status waiting" in res.out and "waiting on signal approval" in res.out
    assert "pending" in next(line for line in res.out.splitlines() if "approval" in line and "wait" in line)


def test_show_says_a_reorg_came_after_the_run_had_failed(db: Db) -> None:
    """The reorg monitor flags a failed run without reopening it (its compensations
    already ran); status and show say so instead of leaving the flag invisible."""
    app = cf.Chainflow(db.url)
    with app.engine.begin() as conn:  # what the monitor does for a submit step named "create"
        assert store.request_rollback(conn, db.failed_run, "\x1fcreate", "reorg at block 12", 0.0)
    st = app.status(db.failed_run)
    app.engine.dispose()
    assert st.status == "failed" and st.rollback is not None and st.rollback["reason"] == "reorg at block 12"
    res = invoke("--database-url", db.url, "show", db.failed_run)
    assert res.code == 0, res.err
    assert (f"reorg after the run ended: reorg at block 12 (journal entry {st.rollback['entry_id']}); "
            "not reopened") in " ".join(res.out.split())


def test_show_unknown_run_is_a_one_line_error(db: Db) -> None:
    assert_one_line_error(invoke("--database-url", db.url, "show", "no-such-run"), "no-such-run")


def _entry(key: str, status: str, *, started: float, invalidated: bool = False, kind: str = "step",
           output: Any = None, error: dict[str, Any] | None = None, reason: str | None = None) -> JournalEntry:
    return JournalEntry("", 0 if kind != "compensation" else -1, key, kind,
                        cf.EntryState.INVALIDATED if invalidated else cf.EntryState(status), output, error, 2,
                        started, started + 0.5, invalidated, reason)


def _render(st: RunStatus, journal: list[JournalEntry], attempts: list[AttemptRecord]) -> str:
    console = Console(width=250, no_color=True)
    with console.capture() as cap:
        console.print(timeline(st, journal, attempts))
    return cap.get()


def _status(status: str = "completed", **extra: Any) -> RunStatus:
    base: dict[str, Any] = {"id": "r1", "workflow": "pay", "status": status, "input": None, "output": None,
                            "error": None, "created_at": 0.0, "updated_at": 1.0, "wake_at": None,
                            "waiting_on": [], "cancel_requested": False}
    base.update(extra)
    return RunStatus(**base)


def test_timeline_marks_invalidated_entries_and_puts_attempts_under_the_right_one() -> None:
    """A reorg supersedes a step and re-executes it under the same key; each execution's
    failed attempts must sit under that execution, and markup-like reasons print as-is."""
    journal = [
        _entry("send", "ok", started=10.0, invalidated=True, output="0xold", reason="reorg #1 [block 5]"),
        _entry("send", "ok", started=50.0, output="0xnew"),
    ]
    attempts = [
        AttemptRecord("", "send", 1, {"type": "builtins.OSError", "message": "first run glitch"}, 5.0, 6.0, 9.0),
        AttemptRecord("", "send", 1, {"type": "builtins.OSError", "message": "second run glitch"}, 40.0, 41.0, 45.0),
    ]
    out = _render(_status(output="0xnew"), journal, attempts).splitlines()
    old = next(i for i, line in enumerate(out) if "0xold" in line)
    new = next(i for i, line in enumerate(out) if "0xnew" in line and "send" in line)
    assert "INVALIDATED" in out[old] and "reorg #1 [block 5]" in out[old] and "invalidated" in out[old]
    assert "first run glitch" in out[old + 1] and "retry after 3.00s" in out[old + 1]
    assert "second run glitch" in out[new + 1]


def test_timeline_shows_a_step_still_in_backoff() -> None:
    """Failed attempts are journaled before the step has a journal row of its own."""
    attempts = [AttemptRecord("left", "charge", 1, {"type": "x.Declined", "message": "try later"}, 1.0, 2.0, 62.0)]
    out = _render(_status("sleeping", wake_at=62.0), [], attempts)
    assert "charge" in out and "retrying" in out and "x.Declined: try later" in out
    assert "waiting on timer until" in out


def test_timeline_truncates_long_outputs_and_errors_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal's cells are cut to fit the screen (piped output is whole:
    test_cli_json.test_piped_output_through_python_m_chainflow_is_not_cut)."""
    monkeypatch.setattr(chainflow.cli, "console", Console(width=250, no_color=True, force_terminal=True))
    journal = [_entry("big", "ok", started=0.0, output="y" * 1000),
               _entry("bad", "error", started=1.0, error={"type": "builtins.ValueError", "message": "z" * 1000})]
    out = _render(_status("failed", error={"type": "E", "message": "m"}), journal, [])
    assert "y" * 1000 not in out and "…" in out and "z" * 1000 not in out


def test_timeline_summarises_failed_compensations() -> None:
    journal = [_entry("compensate:create", "error", started=0.0, kind="compensation",
                      error={"type": "builtins.RuntimeError", "message": "refund refused"})]
    out = _render(_status("failed", compensations={"create": "error", "b/ship": "ok"}), journal, [])
    assert "compensations: 2 ran, 1 failed" in out and "create error" in out and "b/ship ok" in out
    assert "refund refused" in out


# --- signal, cancel ---------------------------------------------------------------------


@pytest.mark.parametrize("command", [["cancel"], ["signal", "approval"], ["signal", "approval", "--payload", "1"]])
def test_signal_or_cancel_to_a_finished_run_is_a_one_line_error(db: Db, command: list[str]) -> None:
    res = invoke("--database-url", db.url, command[0], db.failed_run, *command[1:])
    assert_one_line_error(res, db.failed_run, "already failed")


@pytest.mark.parametrize("command", [["cancel"], ["signal", "approval"]])
def test_signal_or_cancel_to_an_unknown_run(db: Db, command: list[str]) -> None:
    assert_one_line_error(invoke("--database-url", db.url, command[0], "ghost", *command[1:]), "'ghost'")


def test_signal_reaches_a_waiting_run(db: Db) -> None:
    res = invoke("--database-url", db.url, "signal", db.waiting_run, "approval", "--payload", '{"ok": true}')
    assert res.code == 0, res.err
    assert db.waiting_run in res.out
    app = cf.Chainflow(db.url)
    try:
        with app.engine.connect() as conn:
            from chainflow.storage import store

            assert store.pending_signal_exists(conn, db.waiting_run, ["approval"])
    finally:
        app.engine.dispose()


def test_cancel_a_live_run(db: Db) -> None:
    res = invoke("--database-url", db.url, "cancel", db.waiting_run)
    assert res.code == 0, res.err
    app = cf.Chainflow(db.url)
    try:
        assert app.status(db.waiting_run).cancel_requested
    finally:
        app.engine.dispose()


def test_bad_signal_payload_is_a_one_line_error(db: Db) -> None:
    res = invoke("--database-url", db.url, "signal", db.waiting_run, "approval", "--payload", "{oops")
    assert_one_line_error(res, "--payload", "{oops")


# --- database URL -----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["mysql+nothing://x", "not a url at all", "sqlite://"])
def test_malformed_database_url_names_it(url: str) -> None:
    res = invoke("--database-url", url, "runs")
    assert res.code == 1 and res.err.count("\n") == 1 and res.err.startswith("error: ")
    assert url in res.err or "in-memory" in res.err


def test_missing_sqlite_file_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    assert_one_line_error(invoke("--database-url", f"sqlite:///{missing}", "runs"), str(missing))
    assert not missing.exists()


def test_app_and_database_url_together_is_a_usage_error(db: Db) -> None:
    assert invoke("--app", "x:app", "--database-url", db.url, "runs").code == 2


# --- APP loading: worker and start ------------------------------------------------------


@pytest.fixture()
def user_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A user module in the cwd, under a fresh name so sys.modules never serves a stale one."""
    name = f"userapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        import chainflow as cf

        app = cf.Chainflow("sqlite:///{tmp_path / 'user.db'}")

        @app.workflow("greet")
        async def greet(ctx: cf.Context, inp: dict) -> str:
            return await ctx.step("hello", lambda: "hello " + inp["name"])
    """))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def test_worker_imports_app_from_cwd_and_runs_it(user_app: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_run_worker(self: cf.Chainflow, concurrency: int = 32, **options: Any) -> None:
        seen.update(app=self, concurrency=concurrency, **options)

    monkeypatch.setattr(cf.Chainflow, "run_worker", fake_run_worker)
    res = invoke("worker", f"{user_app}:app", "--concurrency", "3", "--lease", "7.5")
    assert res.code == 0, res.err
    assert seen["concurrency"] == 3 and seen["lease"] == 7.5
    assert "greet" in seen["app"].registry.names() and "greet" in res.err


@pytest.fixture()
def chainflow_logging() -> Iterator[None]:
    """``chainflow worker`` installs its log handler on the "chainflow" logger: put back
    what the other tests log through."""
    logger = logging.getLogger("chainflow")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


@pytest.mark.usefixtures("chainflow_logging")
def test_worker_json_logs_are_json_on_every_stderr_line(user_app: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A log shipper reading --log-format json takes each stderr line for a JSON object:
    the start lines (database, metrics port) too, and whatever --log-level."""
    monkeypatch.setattr(cf.Chainflow, "run_worker", lambda self, **_: None)
    (Path.cwd() / "empty.py").write_text("import chainflow as cf\napp = cf.Chainflow('sqlite:///empty.db')\n")
    sys.modules.pop("empty", None)
    res = invoke("worker", f"{user_app}:app", "--log-format", "json", "--log-level", "error", "--metrics-port", "0")
    empty = invoke("worker", "empty:app", "--log-format", "json")
    assert (res.code, empty.code) == (0, 0), res.err + empty.err
    lines = [json.loads(line) for line in (res.err + empty.err).splitlines()]  # each line parses
    assert [line["message"].split(":")[0] for line in lines] == [
        "chainflow worker", "chainflow worker", "empty", "chainflow worker"]
    assert "greet" in lines[0]["message"] and "/metrics" in lines[1]["message"]
    assert lines[2]["level"] == "warning" and "registers no workflows" in lines[2]["message"]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("no_such_module_xyz:app", "no_such_module_xyz"),
        ("missing-colon", "module:attribute"),
        (":app", "module:attribute"),
        ("{mod}:nope", "nope"),
        ("{mod}:cf", "not a chainflow.Chainflow app"),
    ],
)
def test_worker_with_a_bad_app_path_is_a_one_line_error(user_app: str, spec: str, needle: str) -> None:
    assert_one_line_error(invoke("worker", spec.format(mod=user_app)), needle)


def test_worker_app_whose_import_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"brokenapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import chainflow as cf\napp = cf.Chainflow('oracle://nope')\n")
    monkeypatch.chdir(tmp_path)
    try:
        assert_one_line_error(invoke("worker", f"{name}:app"), name, "oracle://nope")
    finally:
        sys.modules.pop(name, None)


def test_worker_options_are_validated() -> None:
    assert invoke("worker", "x:app", "--concurrency", "0").code == 2
    assert invoke("worker", "x:app", "--lease", "0").code == 2


def test_start_prints_the_run_id_and_honours_the_key(user_app: str) -> None:
    first = invoke("--app", f"{user_app}:app", "start", "greet", "--input", '{"name": "ann"}', "--key", "k1")
    assert first.code == 0, first.err
    run_id = first.out.strip()
    uuid.UUID(run_id)  # stdout is exactly the id
    again = invoke("--app", f"{user_app}:app", "start", "greet", "--input", '{"name": "ann"}', "--key", "k1")
    assert again.code == 0 and again.out.strip() == run_id and "already started" in again.err
    clash = invoke("--app", f"{user_app}:app", "start", "greet", "--input", '{"name": "bob"}', "--key", "k1")
    assert_one_line_error(clash, "'k1'")
    listed = invoke("--app", f"{user_app}:app", "runs")
    assert listed.code == 0 and run_id in listed.out and "pending" in listed.out


def test_start_errors(user_app: str) -> None:
    assert_one_line_error(invoke("--app", f"{user_app}:app", "start", "nope"), "'nope'")
    assert_one_line_error(invoke("--app", f"{user_app}:app", "start", "greet", "--input", "{"), "--input")
    assert invoke("start", "greet").code == 2  # no --app: usage error, not a confusing lookup failure


def test_help_needs_no_database() -> None:
    res = invoke("--help")
    assert res.code == 0
    for command in ("worker", "start", "runs", "show", "signal", "cancel", "nonces"):
        assert command in res.out


@pytest.mark.parametrize(("command", "usage"), [("ui", "ui [OPTIONS] [APP]"), ("fork", "fork [OPTIONS] [RUN]"),
                                                ("replay", "replay [OPTIONS] [RUN]"), ("show", "show [OPTIONS] RUN")])
def test_help_brackets_optional_arguments(command: str, usage: str) -> None:
    assert usage in invoke(command, "--help").out


def test_main_is_the_entry_point(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["chainflow", "--database-url", "mysql+nothing://x", "runs"])
    with pytest.raises(SystemExit) as exit_:
        chainflow.cli.main()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "mysql+nothing://x" in err


def test_metrics_prints_the_database_gauges_in_prometheus_text(db: Db) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from chainflow.storage.schema import reorgs

    app = cf.Chainflow(db.url)
    with app.engine.begin() as conn:
        conn.execute(reorgs.insert().values(chain="local", depth=2, fork_number=9, old_hashes="[]", new_hashes="[]",
                                            affected="[]", detected_at=0.0))
    app.engine.dispose()
    res = invoke("--database-url", db.url, "metrics")
    assert res.code == 0, res.err
    gauges = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(res.out) if f.type == "gauge" for s in f.samples}
    assert gauges[("chainflow_runs", (("status", "failed"),))] == 1
    assert gauges[("chainflow_runs", (("status", "waiting"),))] == 1
    assert gauges[("chainflow_reorgs_recorded", (("chain", "local"),))] == 1
    assert gauges[("chainflow_reorg_blocks_recorded", (("chain", "local"),))] == 2
    assert "# TYPE chainflow_runs gauge" in res.out
    assert not any(name == "chainflow_submissions" for name, _ in gauges)  # no submissions: no empty family


# --- schedules, child runs ----------------------------------------------------------------


def row(out: str, name: str) -> str:
    """The table line whose first cell is ``name``."""
    return next(line for line in out.splitlines() if line.strip("│ ").startswith(name + " "))


def test_schedules_list_pause_and_resume(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    clock = cf.FakeClock(1_699_999_200.0)
    app = cf.Chainflow(url, clock=clock)

    @app.schedule("*/5 * * * *", name="sweep")
    @app.workflow("sweeper")
    async def sweeper(ctx: cf.Context, _: Any) -> None:
        pass

    app.schedule(every=30, workflow="sweeper", name="poke", missed="all", max_missed=4)
    app.ensure_schema()
    scheduler = Scheduler(app.database, clock, app.registry, app.schedules)
    scheduler.declare()
    scheduler.tick()
    clock.advance(300)
    started = scheduler.tick()
    assert len(started) == 1 + 4  # sweep's fire; poke's ten missed fires, at most four
    app.engine.dispose()

    res = invoke("--database-url", url, "schedules")
    assert res.code == 0, res.err
    sweep = row(res.out, "sweep")
    assert "cron */5 * * * * (UTC)" in sweep and "once" in sweep and "active" in sweep
    poke = row(res.out, "poke")
    assert "every 30s" in poke and "all (at most 4)" in poke
    listed = invoke("--database-url", url, "schedules", "--json")
    assert listed.code == 0, listed.out + listed.err
    by_name = {s["name"]: s for s in json.loads(listed.out)}
    assert by_name["poke"]["spec"]["every"] == 30 and by_name["poke"]["spec"]["max_missed"] == 4
    assert by_name["sweep"]["spec"]["cron"] == "*/5 * * * *" and by_name["sweep"]["paused"] is False
    assert by_name["sweep"]["last_fire"] == "2023-11-14T22:05:00+00:00"
    assert by_name["sweep"]["last_run_id"] in started and by_name["sweep"]["workflow"] == "sweeper"

    res = invoke("--database-url", url, "schedule", "pause", "sweep")
    assert res.code == 0 and "schedule 'sweep' paused" in res.out
    assert app.list_schedules()[1].paused and not app.list_schedules()[0].paused
    res = invoke("--database-url", url, "schedules")
    assert "paused" in row(res.out, "sweep")
    res = invoke("--database-url", url, "schedule", "resume", "sweep")
    assert res.code == 0 and not app.list_schedules()[1].paused
    res = invoke("--database-url", url, "schedule", "pause", "nope")
    assert res.code == 1 and "no schedule named 'nope'" in res.err and "Traceback" not in res.err
    assert {s.last_run_id for s in app.list_schedules()} <= set(started)
    app.engine.dispose()


def test_show_lists_a_runs_children_and_a_childs_parent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    app = cf.Chainflow(url, clock=cf.FakeClock())

    @app.workflow("kid")
    async def kid(ctx: cf.Context, n: int) -> int:
        return n + 1

    @app.workflow("mom")
    async def mom(ctx: cf.Context, _: Any) -> int:
        return await ctx.child("first", "kid", 1) + await ctx.child("second", "kid", 2)

    done = asyncio.run(WorkflowTester(app).run("mom", None))
    assert done.status == "completed" and done.output == 5
    kids = {k.parent_step: k for k in app.children(done.run.id)}
    first, second = kids["first"], kids["second"]
    app.engine.dispose()
    res = invoke("--database-url", url, "show", done.run.id)
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert "child runs" in res.out
    assert any(first.id in line and "kid" in line and "completed" in line and "first" in line for line in lines)
    assert any(second.id in line and "second" in line for line in lines)
    res = invoke("--database-url", url, "show", first.id)
    assert f"child of run {done.run.id} (its step first)" in res.out


def test_show_says_a_sleep_was_interrupted_by_cancel_and_numbers_attempts_from_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sleep.db'}"
    app = cf.Chainflow(url, clock=cf.FakeClock())
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"glitch {len(calls)}")
        return "ok"

    @app.workflow("napper")
    async def napper(ctx: cf.Context, _: object) -> None:
        await ctx.step("flaky", flaky, retry=cf.Retry(max_attempts=3, initial=1, jitter=0))
        await ctx.sleep("short", 60)
        await ctx.sleep("month", 30 * 86400)
        await ctx.step("renew", lambda: "renewed")

    tester = WorkflowTester(app)

    async def scenario() -> str:
        assert isinstance(app.clock, cf.FakeClock)
        run_id = (await app.astart("napper", None)).id
        await tester.run_until_idle(advance=False)
        while "month" not in [e.key for e in app.journal(run_id)]:  # up to the month's sleep, not through it
            wake_at = app.status(run_id).wake_at
            assert wake_at is not None
            app.clock.set(wake_at)
            await tester.run_until_idle(advance=False)
        app.clock.advance(3600)  # an hour into the month
        await app.acancel(run_id)
        await tester.run_until_idle(advance=False)
        return run_id

    run_id = asyncio.run(scenario())
    assert app.status(run_id).status == "cancelled"
    app.engine.dispose()
    res = invoke("--database-url", url, "show", run_id)
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    month = next(line for line in lines if "month" in line and "sleep" in line)
    assert "interrupted by cancel at" in month and "was to wake" in month and " 1h00m " in month
    short = next(line for line in lines if "short" in line and "sleep" in line)
    assert " woke " in short and "interrupted" not in short and " 1m00s " in short
    flaky_row = next(line for line in lines if "flaky" in line and "step" in line)
    assert " 3 " in flaky_row  # three tries, numbered 1, 2 and the journaled 3rd
    assert [line.split("attempt ")[1].split()[0] for line in lines if "  attempt " in line] == ["1", "2"]
    assert "glitch 1" in next(line for line in lines if "attempt 1" in line)
    assert "glitch 2" in next(line for line in lines if "attempt 2" in line)

    data = json.loads(invoke("--database-url", url, "show", run_id, "--json").out)
    sleeps = {e["step"]: e["sleep"] for e in data["journal"] if e["kind"] == "sleep"}
    assert sleeps["month"]["cut_short_by"] == "cancel" and sleeps["short"]["cut_short_by"] is None
    assert sleeps["month"]["left_at"] < sleeps["month"]["wake_at"]
    assert [a["attempt"] for a in data["failed_attempts"]] == [1, 2]
