"""Replay, export and fork of runs without a chain, on SQLite and Postgres.

Every replay test checks what replay promises first: the live database is exactly as
it was (every table dumped before and after) and no step code ran that was not asked
to run (the call log)."""

from __future__ import annotations

import decimal
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.replay.diff import Edit
from chainflow.replay.history import History, HistoryFormatError
from chainflow.replay.replayer import Override
from chainflow.replay.report import Change
from chainflow.storage.schema import metadata
from chainflow.testing import CallLog, WorkflowTester, assert_unchanged, replay_history

from . import _flows
from ._flows import FEE, WEI


@pytest.fixture(autouse=True)
def call_log(calls: CallLog) -> Any:
    _flows.CALLS["log"] = calls
    yield calls
    _flows.CALLS.clear()


def dump(app: cf.Chainflow) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every chainflow table, in primary-key order."""
    with app.engine.connect() as conn:
        return {t.name: [tuple(r) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
                for t in metadata.sorted_tables}


async def recorded_payment(make_app: Any, order: str = "order-1") -> tuple[cf.Chainflow, str]:
    app = make_app(clock=cf.FakeClock())
    _flows.register(app)
    tester = WorkflowTester(app)
    run_id = (await app.astart("payment", order)).id
    await tester.run_until_idle()
    await app.asignal(run_id, "approve", {"by": "ops", "limit": decimal.Decimal("12.50")})
    await tester.run_until_idle()
    st = await app.astatus(run_id)
    assert st.status == "completed", st.error
    return app, run_id


async def test_unchanged_code_replays_unchanged_and_writes_nothing(make_app: Any, calls: CallLog) -> None:
    app, run_id = await recorded_payment(make_app)
    before, effects = dump(app), calls.lines()

    report = await app.areplay(run_id)

    assert not report.changed, report.to_json()
    assert [s.label for s in report.steps] == ["reserve", "now", "uuid", "settle", "approve", "credit-ledger",
                                               "notify", "random"]
    assert {s.change for s in report.steps} == {Change.UNCHANGED}
    assert (report.recorded_status, report.replayed_status) == ("completed", "completed")
    assert dump(app) == before and calls.lines() == effects


async def test_overridden_ledger_with_fee_changes_exactly_that_step(make_app: Any, calls: CallLog) -> None:
    app, run_id = await recorded_payment(make_app)
    before, effects = dump(app), calls.lines()

    report = await app.areplay(run_id, overrides={"credit-ledger": Override(_flows.ledger_with_fee, pure=True)})

    assert report.changed
    changed = [s for s in report.steps if s.change != Change.UNCHANGED]
    assert [(s.label, s.change) for s in changed] == [("credit-ledger", Change.OUTPUT_CHANGED)]
    amount = WEI + len("order-1")
    fee = int(amount * FEE)
    by_path = {d.path: d for d in changed[0].diff}
    assert set(by_path) == {".credited", ".fee"}
    assert (by_path[".credited"].recorded, by_path[".credited"].replayed) == (amount, amount - fee)
    assert by_path[".fee"].edit == Edit.CHANGED and by_path[".fee"].replayed == FEE
    assert {d.path for d in report.output_diff} == {".posted.credited", ".posted.fee"}
    # the JSON form keeps the big int and the Decimal exact
    data = json.loads(report.to_json())
    credited = next(d for d in data["steps"][5]["diff"] if d["path"] == ".credited")
    assert credited["replayed"] == {"__cf__": "int", "v": str(amount - fee)}
    # the new code ran once (pure); the recorded code never ran again; nothing written
    assert calls.lines() == effects + ["ledger_v2"]
    assert dump(app) == before


async def test_effectful_override_is_only_reported_unless_effects_are_allowed(make_app: Any, calls: CallLog) -> None:
    app, run_id = await recorded_payment(make_app)
    effects = calls.lines()

    report = await app.areplay(run_id, overrides={"credit-ledger": _flows.ledger_with_fee})
    step = report.step("credit-ledger")
    assert step.change == Change.WOULD_RUN
    assert step.detail.startswith(f"would run: credit-ledger({WEI + 7})")
    assert report.replayed_status == "completed" and not report.output_diff  # the recorded output carried on
    assert calls.lines() == effects

    allowed = await app.areplay(run_id, overrides={"credit-ledger": _flows.ledger_with_fee}, allow_effects=True)
    assert allowed.step("credit-ledger").change == Change.OUTPUT_CHANGED
    assert calls.lines() == effects + ["ledger_v2"]


async def test_an_override_that_fails_is_an_error_change(make_app: Any) -> None:
    app, run_id = await recorded_payment(make_app)
    report = await app.areplay(run_id, overrides={"credit-ledger": Override(_flows.broken_ledger, pure=True)})
    step = report.step("credit-ledger")
    assert step.change == Change.ERROR_CHANGED and "ledger is down" in step.detail
    assert report.replayed_status == "failed"
    # the run failing runs the reservation's compensation: recorded nowhere, so "would run"
    assert report.step("compensate:reserve").change == Change.WOULD_RUN
    assert report.step("notify").change == Change.MISSING


async def test_inserted_step_is_a_divergence_and_later_steps_match_by_name(make_app: Any, calls: CallLog) -> None:
    app, run_id = await recorded_payment(make_app)
    effects = calls.lines()

    halted = await app.areplay(run_id, workflow=_flows.payment_with_kyc)
    assert halted.divergence is not None and "history holds now 'now'" in halted.divergence
    assert "asks for step 'kyc'" in halted.divergence
    kyc = halted.step("kyc")
    assert kyc.change == Change.DIVERGENCE and "would run: kyc('order-1')" in kyc.detail
    assert halted.replayed_status == "halted"
    assert halted.step("notify").change == Change.NOT_REACHED

    through = await app.areplay(run_id, workflow=_flows.payment_with_kyc, pure=["kyc"])
    assert through.step("kyc").change == Change.DIVERGENCE
    assert {s.change for s in through.steps if s.label != "kyc"} == {Change.UNCHANGED}
    assert through.replayed_status == "completed" and not through.output_diff
    assert calls.lines() == effects


async def test_removed_step_is_missing(make_app: Any) -> None:
    app, run_id = await recorded_payment(make_app)
    report = await app.areplay(run_id, workflow=_flows.payment_without_notify)
    assert [(s.label, s.change) for s in report.steps if s.change != Change.UNCHANGED] == [
        ("notify", Change.MISSING), ("random", Change.MISSING)]
    assert {(d.path, d.edit) for d in report.output_diff} == {
        (".sent", Edit.REMOVED), (".draw", Edit.REMOVED)}


async def test_waiting_run_replays_up_to_where_it_waits(make_app: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    _flows.register(app)
    tester = WorkflowTester(app)
    run_id = (await app.astart("payment", "order-2")).id
    await tester.run_until_idle()
    assert (await app.astatus(run_id)).status == "waiting"
    report = await app.areplay(run_id)
    assert not report.changed, report.to_json()
    assert report.replayed_status == "waiting"
    assert "the run waits for signal 'approve'" in report.step("approve").detail


async def test_export_round_trip_and_the_pytest_helper(make_app: Any, tmp_path: Path) -> None:
    app, run_id = await recorded_payment(make_app)
    path = tmp_path / "run.json"
    path.write_text(app.export(run_id))
    history = History.from_json(path.read_text())
    assert history.run.id == run_id and [e.label for e in history.entries][:2] == ["reserve", "now"]

    # a fresh app with the same code and no access to the recording database
    fresh = cf.Chainflow(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    _flows.register(fresh)
    ok = await fresh.areplay(history)
    assert not ok.changed
    assert not (tmp_path / "elsewhere.db").exists() or dump(fresh)["cf_runs"] == []

    changed = await fresh.areplay(history, overrides={"credit-ledger": Override(_flows.ledger_with_fee, pure=True)})
    with pytest.raises(AssertionError, match="credit-ledger: output_changed"):
        assert_unchanged(changed)
    fresh.engine.dispose()


def test_replay_history_helper_is_synchronous(tmp_path: Path) -> None:
    """What a team's own test looks like: no event loop, no database of theirs."""
    import asyncio

    recording = cf.Chainflow(f"sqlite:///{tmp_path / 'prod.db'}", clock=cf.FakeClock())
    _flows.register(recording)

    async def record() -> str:
        tester = WorkflowTester(recording)
        run_id = (await recording.astart("payment", "order-3")).id
        await tester.run_until_idle()
        await recording.asignal(run_id, "approve", "yes")
        await tester.run_until_idle()
        return run_id

    run_id = asyncio.run(record())
    path = tmp_path / "history.json"
    path.write_text(recording.export(run_id))
    app = cf.Chainflow(f"sqlite:///{tmp_path / 'test.db'}")
    _flows.register(app)
    assert_unchanged(replay_history(app, path))
    with pytest.raises(AssertionError, match="output_changed"):
        assert_unchanged(replay_history(app, path, overrides={"credit-ledger": Override(_flows.ledger_with_fee,
                                                                                        pure=True)}))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "chainflow-history", "version": 99}))
    with pytest.raises(HistoryFormatError, match="version 99"):
        replay_history(app, bad)
    for a in (recording, app):
        a.engine.dispose()


async def test_sweep_groups_changes(make_app: Any) -> None:
    app, first = await recorded_payment(make_app, "a")
    tester = WorkflowTester(app)
    others = [(await app.astart("payment", o)).id for o in ("bb", "ccc")]
    await tester.run_until_idle()
    for run_id in others:
        await app.asignal(run_id, "approve", None)
    await tester.run_until_idle()
    seen: list[tuple[int, int]] = []
    sweep = await app.areplay_sweep(workflow_name="payment", status="completed",
                                    overrides={"credit-ledger": Override(_flows.ledger_with_fee, pure=True)},
                                    progress=lambda done, total: seen.append((done, total)))
    assert len(sweep.reports) == 3 and not sweep.failures
    assert sorted(sweep.by_change()["output_changed"]) == sorted([first, *others])
    assert seen[-1] == (3, 3)
    sample = await app.areplay_sweep(workflow_name="payment", sample=2)
    assert len(sample.reports) == 2 and not sample.changed


async def recorded_failure(make_app: Any, order: str) -> tuple[cf.Chainflow, WorkflowTester, str]:
    app = make_app(clock=cf.FakeClock(), default_retry=cf.Retry(max_attempts=2, initial=1.0))
    app.workflow("payment")(_flows.payment_on_broken_ledger)
    tester = WorkflowTester(app)
    run_id = (await app.astart("payment", order)).id
    await tester.run_until_idle()
    await app.asignal(run_id, "approve", "ok")
    await tester.run_until_idle()
    st = await app.astatus(run_id)
    assert st.status == "failed" and "ledger is down" in str(st.error), st
    return app, tester, run_id


async def test_fork_of_failed_run_from_failed_step_completes_without_rerunning_earlier_steps(
        make_app: Any, calls: CallLog) -> None:
    app, tester, source = await recorded_failure(make_app, "order-9")
    before = calls.counts()
    assert before["unreserve"] == 1  # the failure compensated the reservation

    handle = app.fork(source, from_failed=True, overrides={"credit-ledger": _flows.ledger_with_fee})
    await tester.run_until_idle()
    fork = await app.astatus(handle.id)
    assert fork.status == "completed", fork.error
    after = calls.counts()
    # the fork re-ran only the failed step (with the fixed code) and what follows it
    assert after - before == {"ledger_v2": 1, "notify": 1}
    assert [e.key for e in app.journal(handle.id)] == ["reserve", "now", "uuid", "settle", "approve",
                                                         "credit-ledger", "notify", "random"]
    source_journal = {e.key: e.output for e in app.journal(source)}
    assert {e.key: e.output for e in app.journal(handle.id)}["reserve"] == source_journal["reserve"]
    amount = WEI + len("order-9")
    assert fork.output["posted"] == {"credited": amount - int(amount * FEE), "fee": FEE}
    with app.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT parent_id, overrides FROM cf_runs WHERE id = :i"),
                           {"i": handle.id}).one()
    assert row.parent_id == source
    assert json.loads(row.overrides)["steps"] == {"credit-ledger": "tests.replay._flows:ledger_with_fee"}
    assert (await app.astatus(source)).status == "failed"  # the source stays as it was


async def test_fork_points_by_meaning_and_clear_errors(make_app: Any) -> None:
    app, tester, source = await recorded_failure(make_app, "order-11")
    with pytest.raises(cf.ChainflowError, match="has no step 'nope' in its journal .*reserve, now"):
        app.fork(source, from_step="nope")
    with pytest.raises(cf.ConfigurationError, match="no attribute 'missing'"):
        app.fork(source, from_failed=True, overrides={"credit-ledger": "tests.replay._flows:missing"})
    with pytest.raises(cf.ConfigurationError, match="no import path"):
        app.fork(source, from_failed=True, overrides={"credit-ledger": lambda amount: amount})
    with pytest.raises(ValueError, match="exactly one of"):
        app.fork(source, from_step="reserve", from_failed=True)
    assert len(app.runs()) == 1  # nothing was written by the refused forks
    waiting = (await app.astart("payment", "order-12")).id
    await tester.run_until_idle()
    with pytest.raises(cf.ChainflowError, match="is waiting: fork a finished run"):
        app.fork(waiting, from_step="approve")

    handle = app.fork(source, from_step="approve", overrides={"credit-ledger": "tests.replay._flows:ledger"})
    assert [e.key for e in app.journal(handle.id)] == ["reserve", "now", "uuid", "settle"]
    await app.asignal(handle.id, "approve", "again")
    await tester.run_until_idle()
    assert (await app.astatus(handle.id)).status == "completed"


async def test_bulk_fork_is_resumable(make_app: Any) -> None:
    app, tester, first = await recorded_failure(make_app, "a")
    second = (await app.astart("payment", "b")).id
    await tester.run_until_idle()
    await app.asignal(second, "approve", "ok")
    await tester.run_until_idle()

    progress: list[tuple[int, int]] = []
    summary = app.fork_many(workflow_name="payment", status="failed", from_failed=True,
                            overrides={"credit-ledger": _flows.ledger_with_fee},
                            progress=lambda done, total: progress.append((done, total)))
    assert set(summary.created) == {first, second} and progress[-1] == (2, 2)
    again = app.fork_many(workflow_name="payment", status="failed", from_failed=True,
                          overrides={"credit-ledger": _flows.ledger_with_fee})
    assert not again.created and again.skipped == {first: "already forked", second: "already forked"}
    await tester.run_until_idle()
    assert {(await app.astatus(f)).status for f in summary.created.values()} == {"completed"}


async def test_bulk_fork_run_again_forks_only_the_sources_it_had_not_reached(make_app: Any) -> None:
    """A fork is a run of the same workflow: once the first pass's forks have failed
    too (the fix did not hold), running the same command again must not select them
    and fork a second generation that executes the steps after the fork point again."""
    app, tester, first = await recorded_failure(make_app, "a")
    summary = app.fork_many(workflow_name="payment", status="failed", from_failed=True)
    await tester.run_until_idle()
    (fork,) = summary.created.values()
    assert (await app.astatus(fork)).status == "failed"  # the ledger is still down
    late = (await app.astart("payment", "b")).id  # a source the first pass did not reach
    await tester.run_until_idle()
    await app.asignal(late, "approve", "ok")
    await tester.run_until_idle()

    again = app.fork_many(workflow_name="payment", status="failed", from_failed=True)
    assert list(again.created) == [late] and again.skipped == {first: "already forked"}
    assert app.fork_many(workflow_name="payment", status="failed", from_failed=True).created == {}


async def test_a_forked_dead_lettered_run_cannot_be_retried(make_app: Any) -> None:
    """A dead-lettered run may be forked (the engine gave up on it), and may be retried
    (an operator puts it back), but not both: the fork and the retried run would each
    execute the steps after the fork point.  Once forked, a retry is refused and the run
    stays dead-lettered."""
    from chainflow.storage.schema import runs
    from chainflow.storage.store import dead_letter

    app, tester, source = await recorded_failure(make_app, "dl")
    with app.engine.begin() as conn:  # as if its executions kept crashing before it failed
        conn.execute(runs.update().where(runs.c.id == source).values(status="running"))
        fence = conn.execute(sa.select(runs.c.fence).where(runs.c.id == source)).scalar_one()
        assert dead_letter(conn, source, fence, 4, '{"message": "crashed"}', app.clock.time())
    fork = app.fork(source, from_failed=True, overrides={"credit-ledger": _flows.ledger_with_fee})
    with pytest.raises(cf.RunForkedError, match=f"it was forked as {fork.id}"):
        app.retry(source)
    assert app.status(source).status == "dead_lettered"
    await tester.run_until_idle()
    assert (await app.astatus(fork.id)).status == "completed"


async def test_a_caught_step_error_replays_as_the_run_saw_it(make_app: Any) -> None:
    """A failed step's error re-raised from history names it as the run saw it live
    (``pay#1``, ``0/bad``): a handler that decides on it takes the recorded path, and
    unchanged code replays unchanged."""
    app = make_app(clock=cf.FakeClock())

    def declined() -> None:
        raise ValueError("declined")

    async def caught(ctx: cf.Context, name: str) -> str:
        try:
            await ctx.step(name, declined, retry=cf.Retry(max_attempts=1))
        except cf.StepError as exc:
            label = exc.step
            return await ctx.step("handled " + label.replace("#", "-").replace("/", "-"), lambda: label)
        return "none"

    @app.workflow("handled")
    async def handled(ctx: cf.Context, _: Any) -> list[Any]:
        await ctx.step("pay", lambda: "paid")
        return [await caught(ctx, "pay"), *await ctx.gather(caught(ctx, "bad"))]

    result = await WorkflowTester(app).run("handled")
    assert result.output == ["pay#1", "0/bad"], result.error

    report = await app.areplay(result.run.id)
    assert not report.changed, report.to_json()
    assert report.replayed_status == "completed"
