"""Bad input from a careless caller or an unlucky operator (issue #12, items 5, 7, 8, 10).

Every argument is refused where it is given, naming the argument and the value, before
anything runs or is journaled: checked through a call log (nothing ran) and the journal
(no row, no position taken).  Length limits come from the schema and hold identically
on SQLite and Postgres.  Operator-facing failures are one line on stderr.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import make_url

import chainflow as cf
from chainflow.cli import cli
from chainflow.storage import codec, limits
from chainflow.storage.connector import sqlite_file
from chainflow.testing import CallLog

from ..engine._util import running_worker

pytestmark = pytest.mark.timeout(60)  # the defects hang (NaN spins): fail, do not wait

NAN, INF = float("nan"), float("inf")


class FakeChain:
    """Enough of a ChainAdapter for ``ctx.submit`` to reach its argument checks."""

    name = "fake"

    async def aclose(self) -> None:
        pass


async def drive(app: cf.Chainflow, workflow: str, input: Any = None) -> cf.RunStatus:
    """Start a run and execute it until it finishes or parks (a park fails the caller's
    asserts at once instead of hanging)."""
    handle = await app.astart(workflow, input)
    worker = app.worker(track=False, inline_wait=0.0, poll_interval=0.01)
    await worker.start()
    try:
        await worker.drain()
    finally:
        await worker.close()
    return await app.astatus(handle.id)


def refused(outcome: Any, kind: type[Exception], *needles: str) -> None:
    """``outcome`` is the workflow's report of the exception the call raised."""
    assert isinstance(outcome, dict), f"the call was accepted: {outcome!r}"
    assert outcome["type"] == kind.__name__, outcome
    for needle in needles:
        assert needle in outcome["message"], (needle, outcome["message"])


# --- item 5: durations, timeouts and retry policies ----------------------------------------


# (call, exception, what the message must name)
CTX_CALLS: dict[str, tuple[Callable[[cf.Context], Any], type[Exception], tuple[str, ...]]] = {
    "sleep nan": (lambda ctx: ctx.sleep("nap", NAN), ValueError, ("duration of sleep 'nap'", "nan")),
    "sleep inf": (lambda ctx: ctx.sleep("nap", INF), ValueError, ("duration of sleep 'nap'", "inf")),
    "sleep 1e308": (lambda ctx: ctx.sleep("nap", 1e308), ValueError, ("MAX_DURATION", "1e+308")),
    "sleep 11 years": (lambda ctx: ctx.sleep("nap", dt.timedelta(days=11 * 365)), ValueError, ("MAX_DURATION",)),
    "sleep negative": (lambda ctx: ctx.sleep("nap", -1), ValueError, ("duration of sleep 'nap'", "-1")),
    # an int past a float's range: float() of it raised a bare OverflowError
    "sleep 10**400": (lambda ctx: ctx.sleep("nap", 10**400), ValueError, ("duration of sleep 'nap'", "MAX_DURATION")),
    "sleep -10**400": (lambda ctx: ctx.sleep("nap", -(10**400)), ValueError,
                       ("duration of sleep 'nap'", "non-negative")),
    "sleep bool": (lambda ctx: ctx.sleep("nap", True), TypeError, ("duration of sleep 'nap'", "True")),
    "sleep str": (lambda ctx: ctx.sleep("nap", cast(Any, "5")), TypeError, ("duration of sleep 'nap'", "'5'")),
    "step timeout 0": (lambda ctx: ctx.step("charge", _record, timeout=0), ValueError,
                       ("timeout of step 'charge'", "positive")),
    "step timeout -1": (lambda ctx: ctx.step("charge", _record, timeout=-1), ValueError,
                        ("timeout of step 'charge'", "-1")),
    "step timeout nan": (lambda ctx: ctx.step("charge", _record, timeout=NAN), ValueError,
                         ("timeout of step 'charge'", "nan")),
    "step timeout bool": (lambda ctx: ctx.step("charge", _record, timeout=True), TypeError,
                          ("timeout of step 'charge'", "True")),
    "wait timeout nan": (lambda ctx: ctx.wait_for("approval", timeout=NAN), ValueError,
                         ("timeout of wait_for 'approval'", "nan")),
    "wait timeout inf": (lambda ctx: ctx.wait_for("approval", timeout=INF), ValueError,
                         ("timeout of wait_for 'approval'", "inf")),
    "wait timeout 20 years": (lambda ctx: ctx.wait_for("approval", timeout=dt.timedelta(days=7300)), ValueError,
                              ("MAX_DURATION",)),
    "wait timeout negative": (lambda ctx: ctx.wait_for("approval", timeout=-5), ValueError,
                              ("timeout of wait_for 'approval'", "-5")),
    # taken as a policy, an int failed only at the step's first failure, after it ran
    "step retry int": (lambda ctx: ctx.step("charge", _record, retry=cast(Any, 3)), TypeError,
                       ("retry of step 'charge'", "chainflow.Retry", "3")),
    "submit retry int": (lambda ctx: ctx.submit("mint", chain="fake", tx={}, idempotency_key="k",
                                                retry=cast(Any, 3)), TypeError,
                         ("retry of submit 'mint'", "chainflow.Retry", "3")),
    # called, it failed as the step's own error and was retried with backoff
    "step fn not callable": (lambda ctx: ctx.step("charge", cast(Any, 5)), TypeError,
                             ("step 'charge'", "callable", "5")),
    # awaited in its task: "object int can't be used in 'await' expression", naming no branch
    "branch not awaitable": (lambda ctx: ctx.branch("fanout", cast(Any, 5)), TypeError,
                             ("branch 'fanout'", "awaitable", "5")),
    "gather not awaitable": (lambda ctx: ctx.gather(ctx.step("charge", _record), cast(Any, 5), names=["ok", "fanout"]),
                             TypeError, ("gather 'fanout'", "awaitable", "5")),
}

_LOG: list[CallLog] = []  # the current test's call log, for the module-level step function


def _record(*args: Any) -> str:
    _LOG[-1].hit("ran")
    return "ran"


@pytest.fixture
def sqlite_app(tmp_path: Path, calls: CallLog) -> Iterator[cf.Chainflow]:
    _LOG.append(calls)
    app = cf.Chainflow(f"sqlite:///{tmp_path / 'bad.db'}", chains=[FakeChain()])  # type: ignore[list-item]
    yield app
    app.engine.dispose()
    _LOG.pop()


def probe(app: cf.Chainflow, call: Callable[[cf.Context], Any], name: str = "probe") -> None:
    """A workflow that makes ``call``, reports what it raised, then journals one step:
    that step must land at position 0, i.e. the refused call took no slot."""

    @app.workflow(name)
    async def run(ctx: cf.Context, _: Any) -> Any:
        try:
            await call(ctx)
        except Exception as exc:  # noqa: BLE001 - the report is the point
            outcome: Any = {"type": type(exc).__name__, "message": str(exc)}
        else:
            outcome = "accepted"
        await ctx.step("after", lambda: None)
        return outcome


@pytest.mark.parametrize("case", list(CTX_CALLS))
async def test_bad_duration_is_refused_at_the_call(sqlite_app: cf.Chainflow, calls: CallLog, case: str) -> None:
    call, kind, needles = CTX_CALLS[case]
    probe(sqlite_app, call)
    st = await drive(sqlite_app, "probe")
    assert st.status == "completed", (st.status, st.error)
    refused(st.output, kind, *needles)
    assert calls.lines() == []  # the step never ran
    journal = sqlite_app.journal(st.id)
    assert [(e.position, e.key) for e in journal] == [(0, "after")]  # nothing journaled, no slot taken


@pytest.mark.parametrize("case", ["step retry int", "step fn not callable"])
async def test_a_replay_refuses_a_bad_step_argument_as_the_live_run_did(sqlite_app: cf.Chainflow, calls: CallLog,
                                                                        case: str) -> None:
    probe(sqlite_app, CTX_CALLS[case][0])
    st = await drive(sqlite_app, "probe")
    report = await sqlite_app.areplay(st.id, allow_effects=True)
    assert not report.changed, report
    assert calls.lines() == []


async def test_uncaught_bad_argument_fails_the_run_with_a_clear_message(sqlite_app: cf.Chainflow) -> None:
    @sqlite_app.workflow("naive")
    async def naive(ctx: cf.Context, _: Any) -> None:
        await ctx.sleep("nap", NAN)

    st = await drive(sqlite_app, "naive")
    assert st.status == "failed" and st.error is not None
    assert "duration of sleep 'nap'" in st.error["message"] and "nan" in st.error["message"]
    assert sqlite_app.journal(st.id) == []


@pytest.mark.parametrize(
    ("kwargs", "kind", "needles"),
    [
        (dict(initial=NAN), ValueError, ("Retry.initial", "nan")),
        (dict(initial=INF), ValueError, ("Retry.initial", "inf")),
        (dict(initial=-1), ValueError, ("Retry.initial", "-1")),
        (dict(initial=True), TypeError, ("Retry.initial", "True")),
        (dict(initial=10**400), ValueError, ("Retry.initial", "MAX_DURATION")),
        (dict(max_delay=NAN), ValueError, ("Retry.max_delay", "nan")),
        (dict(max_delay=1e308), ValueError, ("Retry.max_delay", "MAX_DURATION")),
        (dict(max_attempts="3"), TypeError, ("Retry.max_attempts", "'3'")),
        (dict(max_attempts=3.0), TypeError, ("Retry.max_attempts", "3.0")),
        (dict(max_attempts=True), TypeError, ("Retry.max_attempts", "True")),
        (dict(max_attempts=0), ValueError, ("Retry.max_attempts", "0")),
        (dict(multiplier=NAN), ValueError, ("Retry.multiplier", "nan")),
        (dict(multiplier=0.5), ValueError, ("Retry.multiplier", "0.5")),
        (dict(jitter=INF), ValueError, ("Retry.jitter", "inf")),
        (dict(jitter="0.1"), TypeError, ("Retry.jitter", "'0.1'")),
        (dict(non_retryable=ValueError), TypeError, ("Retry.non_retryable",)),
    ],
)
def test_bad_retry_policy_is_refused_where_it_is_written(kwargs: dict[str, Any], kind: type[Exception],
                                                         needles: tuple[str, ...]) -> None:
    with pytest.raises(kind) as info:
        cf.Retry(**kwargs)
    for needle in needles:
        assert needle in str(info.value)


def test_exponential_backoff_saturates_instead_of_overflowing() -> None:
    forever = cf.Retry(max_attempts=10**9, initial=0, jitter=0)
    assert [forever.delay(n) for n in (1, 1_000, 1_100, 10**6, 10**9)] == [0.0] * 5
    capped = cf.Retry(max_attempts=10**9, initial=0.5, multiplier=2, max_delay=60, jitter=0)
    assert [capped.delay(n) for n in (1, 2, 3, 8, 1_100, 10**9)] == [0.5, 1.0, 2.0, 60.0, 60.0, 60.0]
    jittered = cf.Retry(max_attempts=10**9, initial=1, multiplier=10, max_delay=30, jitter=0.5)
    assert all(d == 30.0 for d in (jittered.delay(n) for n in (5, 5_000, 10**9)))


@pytest.mark.parametrize(
    ("make", "kind", "needles"),
    [
        (lambda app: app.worker(concurrency=True), TypeError, ("concurrency", "True")),
        (lambda app: app.worker(concurrency="4"), TypeError, ("concurrency", "'4'")),
        (lambda app: app.worker(lease=0), ValueError, ("Worker lease", "0")),
        (lambda app: app.worker(lease=NAN), ValueError, ("Worker lease", "nan")),
        (lambda app: app.worker(poll_interval=0), ValueError, ("Worker poll_interval", "0")),
        (lambda app: app.worker(inline_wait=-1), ValueError, ("Worker inline_wait", "-1")),
        (lambda app: app.worker(worker_id="w" * (limits.WORKER_ID_LENGTH + 1)), ValueError,
         ("worker_id", f"limit is {limits.WORKER_ID_LENGTH}")),
        (lambda app: app.worker(worker_id=""), ValueError, ("worker_id", "empty")),
        # not the function's name, which registered under it instead
        (lambda app: app.workflow("")(_wf), ValueError, ("workflow name", "empty")),
        (lambda app: app.workflow("w", timeout=0)(_wf), ValueError, ("timeout of workflow 'w'", "0")),
        (lambda app: app.workflow("w", timeout=NAN)(_wf), ValueError, ("timeout of workflow 'w'", "nan")),
        (lambda app: app.workflow("w", timeout=dt.timedelta(days=4000))(_wf), ValueError, ("MAX_DURATION",)),
        (lambda app: cf.Chainflow(app.database_url, lease_seconds=-3), ValueError, ("lease_seconds", "-3")),
        (lambda app: cf.Chainflow(app.database_url, lease_seconds=INF), ValueError, ("lease_seconds", "inf")),
        (lambda app: cf.Chainflow(app.database_url, lease_seconds=10**400), ValueError,
         ("lease_seconds", "MAX_DURATION")),
        (lambda app: cf.Chainflow(app.database_url, busy_timeout=NAN), ValueError, ("busy_timeout", "nan")),
        (lambda app: cf.TrackerConfig(poll_interval=0), ValueError, ("TrackerConfig.poll_interval", "0")),
        (lambda app: cf.TrackerConfig(poll_interval=NAN), ValueError, ("TrackerConfig.poll_interval", "nan")),
        (lambda app: cf.TrackerConfig(window=0), ValueError, ("TrackerConfig.window", "0")),
        (lambda app: cf.TrackerConfig(bump_blocks=-1), ValueError, ("TrackerConfig.bump_blocks", "-1")),
        (lambda app: cf.TrackerConfig(max_bumps=cast(Any, 2.5)), TypeError, ("TrackerConfig.max_bumps", "2.5")),
        (lambda app: cf.TrackerConfig(bump_factor=NAN), ValueError, ("TrackerConfig.bump_factor", "nan")),
        # nodes with geth's pool rule refuse a replacement under +10 %: every bump would be wasted
        (lambda app: cf.TrackerConfig(bump_factor=1.05), cf.ConfigurationError,
         ("TrackerConfig.bump_factor", "at least 1.1", "1.05")),
        (lambda app: cf.TrackerConfig(bump_factor=1), cf.ConfigurationError, ("TrackerConfig.bump_factor", "1.1")),
    ],
)
def test_bad_engine_setting_is_refused_where_it_is_given(sqlite_app: cf.Chainflow, make: Callable[[Any], Any],
                                                         kind: type[Exception], needles: tuple[str, ...]) -> None:
    with pytest.raises(kind) as info:
        make(sqlite_app)
    for needle in needles:
        assert needle in str(info.value)
    assert sqlite_app.registry.names() == []


async def _wf(ctx: cf.Context, _: Any) -> None:
    pass


def test_the_maximum_duration_is_public_and_documented() -> None:
    assert cf.MAX_DURATION == dt.timedelta(days=3653)
    root = Path(__file__).resolve().parents[2]
    assert "MAX_DURATION" in (root / "README.md").read_text()


# --- item 7: slot names cannot collide with derived keys ----------------------------------


async def test_hash_in_a_step_name_is_refused_before_any_step_runs(sqlite_app: cf.Chainflow,
                                                                   calls: CallLog) -> None:
    @sqlite_app.workflow("collide")
    async def collide(ctx: cf.Context, _: Any) -> None:
        await ctx.step("a#1", _record)
        await ctx.step("a", _record)
        await ctx.step("a", _record)  # its derived key would be "a#1"

    st = await drive(sqlite_app, "collide")
    assert st.status == "failed" and st.error is not None
    assert "step name 'a#1'" in st.error["message"] and "'#'" in st.error["message"]
    assert "IntegrityError" not in st.error["message"]
    assert calls.lines() == []
    assert sqlite_app.journal(st.id) == []


NAME_CALLS: dict[str, tuple[Callable[[cf.Context], Any], type[Exception], tuple[str, ...]]] = {
    "step #": (lambda ctx: ctx.step("pay#2", _record), ValueError, ("step name 'pay#2'", "'#'")),
    "step /": (lambda ctx: ctx.step("pay/x", _record), ValueError, ("step name 'pay/x'", "'/'")),
    "step empty": (lambda ctx: ctx.step("", _record), ValueError, ("step name", "empty")),
    "step not str": (lambda ctx: ctx.step(cast(Any, 7), _record), TypeError, ("step name", "7")),
    "step reserved prefix": (lambda ctx: ctx.step("compensate:pay", _record), ValueError,
                             ("step name 'compensate:pay'", "compensate:")),
    "sleep #": (lambda ctx: ctx.sleep("nap#1", 1), ValueError, ("sleep name 'nap#1'",)),
    "wait_for #": (lambda ctx: ctx.wait_for("go#1"), ValueError, ("wait name 'go#1'",)),
    "submit #": (lambda ctx: ctx.submit("mint#1", chain="fake", tx={}, idempotency_key="k"), ValueError,
                 ("submit name 'mint#1'",)),
    "submit empty key": (lambda ctx: ctx.submit("mint", chain="fake", tx={}, idempotency_key=""), ValueError,
                         ("idempotency_key of submit 'mint'", "empty")),
    "submit key not str": (lambda ctx: ctx.submit("mint", chain="fake", tx={}, idempotency_key=cast(Any, 5)),
                           TypeError, ("idempotency_key of submit 'mint'", "5")),
    "submit finality not a policy": (lambda ctx: ctx.submit("mint", chain="fake", tx={}, idempotency_key="k",
                                                            finality=cast(Any, "finalized")), TypeError,
                                     ("finality of submit 'mint'", "'finalized'", "cf.Confirmations(n)")),
    "branch /": (lambda ctx: ctx.branch("left/right", ctx.step("x", _record)), ValueError,
                 ("branch name 'left/right'",)),
    "branch #": (lambda ctx: _awaited(ctx.branch("left#1", ctx.step("x", _record))), ValueError,
                 ("branch name 'left#1'",)),
    "gather #": (lambda ctx: ctx.gather(ctx.step("x", _record), ctx.step("y", _record), names=["ok", "b#1"]),
                 ValueError, ("gather name 'b#1'",)),
}


async def _awaited(task: Any) -> Any:
    return await task


@pytest.mark.parametrize("case", list(NAME_CALLS))
async def test_bad_slot_name_is_refused_before_anything_runs(sqlite_app: cf.Chainflow, calls: CallLog,
                                                             case: str) -> None:
    call, kind, needles = NAME_CALLS[case]
    probe(sqlite_app, call)
    st = await drive(sqlite_app, "probe")
    assert st.status == "completed", (st.status, st.error)
    refused(st.output, kind, *needles)
    assert calls.lines() == []
    assert [(e.branch, e.position, e.key) for e in sqlite_app.journal(st.id)] == [("", 0, "after")]


async def test_names_in_use_still_work(sqlite_app: cf.Chainflow, calls: CallLog) -> None:
    """Repeated names, branches and gathers with the names the tests and examples use."""

    @sqlite_app.workflow("fine")
    async def fine(ctx: cf.Context, _: Any) -> None:
        for _ in range(3):
            await ctx.step("charge", _record)
        await ctx.gather(ctx.step("quote", _record), ctx.step("quote", _record),
                         names=["0xAbC-payout.1", "left right"])
        await ctx.branch("audit", ctx.step("check", _record))
        await ctx.branch("audit", ctx.step("check", _record))

    st = await drive(sqlite_app, "fine")
    assert st.status == "completed", st.error
    assert calls.count("ran") == 7
    keys = {(e.branch, e.key) for e in sqlite_app.journal(st.id)}
    assert {("", "charge#2"), ("0xAbC-payout.1", "quote"), ("audit#1", "check")} <= keys


# --- item 8: the same length limits on both backends ---------------------------------------


def test_limits_come_from_the_schema() -> None:
    from chainflow.storage import schema

    assert limits.KEY_LENGTH == cast(sa.String, schema.journal.c.key.type).length == 500
    assert limits.SIGNAL_LENGTH == cast(sa.String, schema.signals.c.name.type).length == 200
    assert limits.IDEMPOTENCY_KEY_LENGTH == cast(sa.String, schema.runs.c.idempotency_key.type).length == 300
    assert limits.NAME_LENGTH < limits.KEY_LENGTH - len(limits.COMPENSATION_PREFIX)


async def test_length_limits_are_the_same_on_both_backends(make_app: Callable[..., cf.Chainflow],
                                                          calls: CallLog) -> None:
    _LOG.append(calls)
    try:
        app = make_app(chains=[FakeChain()])
        longest, too_long = "s" * limits.NAME_LENGTH, "s" * (limits.NAME_LENGTH + 1)
        deep = "b" * limits.NAME_LENGTH

        @app.workflow("lengths")
        async def lengths(ctx: cf.Context, _: Any) -> dict[str, str]:
            async def nested_branch() -> Any:  # opened inside the outer branch: path "b…b/b…b"
                return await ctx.branch(deep, ctx.step("x", _record))

            seen: dict[str, str] = {}
            cases: dict[str, Callable[[], Any]] = {
                "step": lambda: ctx.step(too_long, _record),
                "wait": lambda: ctx.wait_for("w" * (limits.SIGNAL_LENGTH + 1)),
                "branch": lambda: ctx.branch(deep, nested_branch()),
                "submit key": lambda: ctx.submit("mint", chain="fake", tx={},
                                                 idempotency_key="k" * (limits.IDEMPOTENCY_KEY_LENGTH + 1)),
                "submit label": lambda: _awaited(ctx.branch("p" * 300, ctx.submit("m" * 400, chain="fake", tx={},
                                                                                    idempotency_key="k"))),
            }
            for label, make in cases.items():
                try:
                    await make()
                    seen[label] = "accepted"
                except ValueError as exc:
                    seen[label] = str(exc)
            await ctx.step(longest, _record)  # exactly at the limit: stored on both backends
            return seen

        st = await drive(app, "lengths")
        assert st.status == "completed", st.error
        assert f"limit is {limits.NAME_LENGTH}" in st.output["step"]
        assert f"limit is {limits.SIGNAL_LENGTH}" in st.output["wait"]
        assert f"limit is {limits.BRANCH_LENGTH}" in st.output["branch"]
        assert f"limit is {limits.IDEMPOTENCY_KEY_LENGTH}" in st.output["submit key"]
        assert f"limit is {limits.SUBMISSION_LABEL_LENGTH}" in st.output["submit label"]
        assert calls.count("ran") == 1  # only the step at the limit ran
        assert [e.key for e in app.journal(st.id)] == [longest]

        with pytest.raises(ValueError, match=f"limit is {limits.SIGNAL_LENGTH}"):
            app.signal(st.id, "x" * (limits.SIGNAL_LENGTH + 1))
        with pytest.raises(ValueError, match=f"limit is {limits.IDEMPOTENCY_KEY_LENGTH}"):
            app.start("lengths", None, idempotency_key="k" * (limits.IDEMPOTENCY_KEY_LENGTH + 1))
        with pytest.raises(ValueError, match=f"limit is {limits.WORKFLOW_NAME_LENGTH}"):
            app.workflow("w" * (limits.WORKFLOW_NAME_LENGTH + 1))(_wf)
        app.workflow("w" * limits.WORKFLOW_NAME_LENGTH)(_wf)
        at_limit = app.start("w" * limits.WORKFLOW_NAME_LENGTH, None,
                             idempotency_key="k" * limits.IDEMPOTENCY_KEY_LENGTH)
        assert app.status(at_limit.id).workflow == "w" * limits.WORKFLOW_NAME_LENGTH
        assert len(app.runs()) == 2  # the refused start wrote nothing
    finally:
        _LOG.pop()


async def test_a_worker_on_a_host_with_a_long_name_runs_alike_on_both_backends(
        make_app: Callable[..., cf.Chainflow], monkeypatch: pytest.MonkeyPatch) -> None:
    """The default worker id is host:pid:random; with a host name of 120 characters it
    outgrew cf_workers.id and cf_runs.lease_owner (VARCHAR(100)): SQLite stored it,
    Postgres refused every claim and announcement with a raw DataError."""
    monkeypatch.setattr(socket, "gethostname", lambda: "node-" + "x" * 115 + ".example.com")
    app = make_app()

    @app.workflow("hello")
    async def hello(ctx: cf.Context, who: str) -> str:
        return f"hello {who}"

    for worker_id in (None, "w" * limits.WORKER_ID_LENGTH):
        run_id = app.start("hello", "bob").id
        async with running_worker(app, worker_id=worker_id, track=False) as worker:
            assert len(worker.id) <= limits.WORKER_ID_LENGTH and worker.id.startswith(("node-xxx", "www"))
            status = await app.await_run(run_id, timeout=10, poll=0.05)
        assert status.output == "hello bob"


async def test_nul_in_a_name_is_refused_alike_on_both_backends(make_app: Callable[..., cf.Chainflow],
                                                               calls: CallLog) -> None:
    """SQLite stored a NUL, Postgres raised a raw DataError; for a step only once the
    step had run, so its effect ran again on every recovery."""
    _LOG.append(calls)
    try:
        app = make_app(chains=[FakeChain()])
        cases: dict[str, Callable[[cf.Context], Any]] = {
            "step": lambda ctx: ctx.step("send\x00funds", _record),
            "sleep": lambda ctx: ctx.sleep("n\x00p", 1),
            "wait": lambda ctx: ctx.wait_for("g\x00o"),
            "branch": lambda ctx: _awaited(ctx.branch("b\x00", ctx.step("x", _record))),
            "gather": lambda ctx: ctx.gather(ctx.step("x", _record), names=["g\x00"]),
            "submit key": lambda ctx: ctx.submit("mint", chain="fake", tx={}, idempotency_key="k\x00"),
        }

        @app.workflow("nul")
        async def nul(ctx: cf.Context, _: Any) -> dict[str, str]:
            seen: dict[str, str] = {}
            for label, call in cases.items():
                try:
                    await call(ctx)
                    seen[label] = "accepted"
                except ValueError as exc:
                    seen[label] = str(exc)
            await ctx.step("after", _record)
            return seen

        st = await drive(app, "nul")
        assert st.status == "completed", st.error
        assert {label: "NUL character" in seen for label, seen in st.output.items()} == dict.fromkeys(cases, True)
        assert calls.count("ran") == 1  # only "after"
        assert [e.key for e in app.journal(st.id)] == ["after"]

        for refuse in (lambda: app.start("nul", None, idempotency_key="order\x00-1"),
                       lambda: app.signal(st.id, "g\x00o"),
                       lambda: app.workflow("w\x00")(_wf),
                       lambda: app.schedule(every=60, name="s\x00", workflow="nul")):
            with pytest.raises(ValueError, match="contains a NUL character"):
                refuse()
        assert len(app.runs()) == 1
    finally:
        _LOG.pop()


async def test_a_lookup_by_a_name_holding_nul_finds_nothing_alike_on_both_backends(
        make_app: Callable[..., cf.Chainflow]) -> None:
    """No stored id, name or key holds a NUL (every write refuses one), so a lookup by
    one can only find nothing: SQLite said so, Postgres raised a raw DataError (it will
    not even compare with a NUL).  Both now answer as for any id never stored; a page
    cursor, which no page can have handed out with a NUL, is refused naming it."""
    from chainflow.ui.reads import find_run

    app = make_app()
    app.workflow("nul")(_wf)
    st = await drive(app, "nul")
    assert st.status == "completed", st.error
    nul = st.id + "\x00"

    absent: dict[str, Callable[[], Any]] = {
        "status": lambda: app.status(nul),
        "signal": lambda: app.signal(nul, "go"),
        "cancel": lambda: app.cancel(nul),
        "retry": lambda: app.retry(nul),
        "children": lambda: app.children(nul),
        "journal": lambda: app.journal(nul),
        "attempts": lambda: app.attempts(nul),
        "forks": lambda: app.forks(nul),
        "wait": lambda: app.wait(nul, timeout=1),
        "export": lambda: app.export(nul),
        "fork": lambda: app.fork(nul, from_failed=True),
        "astatus": lambda: app.astatus(nul),
        "await_run": lambda: app.await_run(nul, timeout=1),
        "areplay": lambda: app.areplay(nul),
    }
    for call, lookup in absent.items():
        with pytest.raises(cf.RunNotFoundError):
            found = lookup()
            if asyncio.iscoroutine(found):
                await found
    for pause in (app.pause_schedule, app.resume_schedule):
        with pytest.raises(cf.ScheduleNotFoundError):
            pause("every\x00minute")

    empty: dict[str, Callable[[], Any]] = {
        "runs(workflow=)": lambda: app.runs(workflow="nul\x00"),
        "reorgs(chain=)": lambda: app.reorgs(chain="fake\x00"),
        "fork_many(workflow_name=)": lambda: app.fork_many(workflow_name="nul\x00", from_failed=True).created,
        "the dashboard's search": lambda: find_run(app, nul),
    }
    assert {call: lookup() for call, lookup in empty.items()} == {
        call: None if call == "the dashboard's search" else ({} if "fork_many" in call else [])
        for call in empty}
    assert (await app.areplay_sweep(workflow_name="nul\x00")).reports == []
    with pytest.raises(ValueError, match="before .*NUL character"):
        app.runs(before=(st.created_at, nul))
    assert [r.id for r in app.runs(workflow="nul")] == [st.id]  # the same lookups without the NUL still work


# --- client reads: arguments checked at the call, unknown runs alike -----------------------

_ID = "0b3c5d7e-0000-4000-8000-000000000000"  # shaped like a run id, never stored
_NAIVE = dt.datetime(2024, 1, 1)

# (call, exception, what the message must name): each was sent to SQL unchecked, so
# Postgres raised a raw DataError/ProgrammingError (or, for a NaN time, both backends
# answered nothing) where SQLite answered "not found" or []
READ_CALLS: dict[str, tuple[Callable[[cf.Chainflow], Any], type[Exception], tuple[str, ...]]] = {
    "runs since str": (lambda app: app.runs(since=cast(Any, "2024-01-01")), TypeError,
                       ("runs(): since", "a datetime or a number of seconds since the epoch", "'2024-01-01'")),
    "runs since nan": (lambda app: app.runs(since=NAN), ValueError, ("runs(): since", "nan")),
    "runs since -inf": (lambda app: app.runs(since=-INF), ValueError, ("runs(): since", "-inf")),
    "runs since 10**400": (lambda app: app.runs(since=10**400), ValueError, ("runs(): since", "finite")),
    "runs since bool": (lambda app: app.runs(since=True), TypeError, ("runs(): since", "True")),
    "runs since naive": (lambda app: app.runs(since=cast(Any, _NAIVE)), ValueError,
                         ("runs(): since", "timezone-aware")),
    "runs until nan": (lambda app: app.runs(until=NAN), ValueError, ("runs(): until", "nan")),
    "runs workflow int": (lambda app: app.runs(workflow=cast(Any, 5)), TypeError, ("runs(): workflow", "5")),
    "runs status int": (lambda app: app.runs(status=cast(Any, 5)), ValueError, ("runs(): status", "5")),
    "runs limit 0": (lambda app: app.runs(limit=0), ValueError, ("runs(): limit", "0")),
    "runs before str": (lambda app: app.runs(before=cast(Any, "x")), TypeError, ("runs(): before", "'x'")),
    "runs before nan": (lambda app: app.runs(before=(NAN, _ID)), ValueError, ("runs(): before", "nan")),
    "runs before id int": (lambda app: app.runs(before=(1.0, cast(Any, 5))), TypeError, ("runs(): before", "5")),
    "status int": (lambda app: app.status(cast(Any, 5)), TypeError, ("status(): run_id", "5")),
    "astatus int": (lambda app: app.astatus(cast(Any, 5)), TypeError, ("status(): run_id", "5")),
    "journal int": (lambda app: app.journal(cast(Any, 123)), TypeError, ("journal(): run_id", "123")),
    "attempts int": (lambda app: app.attempts(cast(Any, 123)), TypeError, ("attempts(): run_id", "123")),
    "forks int": (lambda app: app.forks(cast(Any, 123)), TypeError, ("forks(): run_id", "123")),
    "children int": (lambda app: app.children(cast(Any, 123)), TypeError, ("children(): run_id", "123")),
    "signal int": (lambda app: app.signal(cast(Any, 5), "go"), TypeError, ("signal(): run_id", "5")),
    "cancel int": (lambda app: app.cancel(cast(Any, 5)), TypeError, ("cancel(): run_id", "5")),
    "retry int": (lambda app: app.retry(cast(Any, 5)), TypeError, ("retry(): run_id", "5")),
    "wait int": (lambda app: app.wait(cast(Any, 5), timeout=1), TypeError, ("wait(): run_id", "5")),
    "await_run int": (lambda app: app.await_run(cast(Any, 5), timeout=1), TypeError, ("await_run(): run_id", "5")),
    "export int": (lambda app: app.export(cast(Any, 5)), TypeError, ("export(): run_id", "5")),
    "replay int": (lambda app: app.replay(cast(Any, 5)), TypeError, ("replay(): run", "5")),
    "areplay int": (lambda app: app.areplay(cast(Any, 5)), TypeError, ("replay(): run", "5")),
    "fork int": (lambda app: app.fork(cast(Any, 5), from_failed=True), TypeError, ("fork(): run_id", "5")),
    "fork after nan": (lambda app: app.fork(_ID, after=NAN), ValueError, ("fork(): after", "nan")),
    "fork after naive": (lambda app: app.fork(_ID, after=_NAIVE), ValueError, ("fork(): after", "timezone-aware")),
    "pause_schedule int": (lambda app: app.pause_schedule(cast(Any, 5)), TypeError, ("pause_schedule(): name", "5")),
    "resume_schedule int": (lambda app: app.resume_schedule(cast(Any, 5)), TypeError,
                            ("resume_schedule(): name", "5")),
    "reorgs chain int": (lambda app: app.reorgs(chain=cast(Any, 5)), TypeError, ("reorgs(): chain", "5")),
    "reorgs limit -1": (lambda app: app.reorgs(limit=-1), ValueError, ("reorgs(): limit", "-1")),
    "replay_sweep since nan": (lambda app: app.replay_sweep(since=NAN), ValueError, ("replay_sweep(): since", "nan")),
    "replay_sweep since str": (lambda app: app.replay_sweep(since=cast(Any, "7d")), TypeError,
                               ("replay_sweep(): since", "timedelta", "'7d'")),
    "replay_sweep since -1 day": (lambda app: app.replay_sweep(since=dt.timedelta(days=-1)), ValueError,
                                  ("replay_sweep(): since", "days=-1")),
    "replay_sweep workflow_name int": (lambda app: app.replay_sweep(workflow_name=cast(Any, 5)), TypeError,
                                       ("replay_sweep(): workflow_name", "5")),
    "replay_sweep status bogus": (lambda app: app.replay_sweep(status="bogus"), ValueError,
                                  ("replay_sweep(): status", "'bogus'")),
    "replay_sweep sample 0": (lambda app: app.replay_sweep(sample=0), ValueError, ("replay_sweep(): sample", "0")),
    "fork_many since nan": (lambda app: app.fork_many(since=NAN, from_failed=True), ValueError,
                            ("fork_many(): since", "nan")),
    "fork_many workflow_name int": (lambda app: app.fork_many(workflow_name=cast(Any, 5), from_failed=True),
                                    TypeError, ("fork_many(): workflow_name", "5")),
}


@pytest.mark.parametrize("case", list(READ_CALLS))
def test_a_client_read_refuses_a_bad_argument_before_the_database_alike_on_both_backends(
        make_app: Callable[..., cf.Chainflow], case: str) -> None:
    call, kind, needles = READ_CALLS[case]
    app = make_app()
    app.ensure_schema()
    connected: list[object] = []
    sa.event.listen(app.engine, "engine_connect", connected.append)
    with pytest.raises(kind) as refusal:
        outcome = call(app)
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
    for needle in needles:
        assert needle in str(refusal.value), (needle, str(refusal.value))
    assert connected == [], "the argument reached the database before it was refused"


def test_reads_with_good_arguments_still_answer(make_app: Callable[..., cf.Chainflow]) -> None:
    """The accepted forms: epoch seconds (int or float), an aware datetime, and for a
    sweep or bulk fork a timedelta back from now."""
    app = make_app(clock=cf.FakeClock(1_700_000_000.0))
    app.workflow("echo")(_wf)
    run = app.start("echo")
    for since in (1_699_999_999, 1_699_999_999.5, dt.datetime(2023, 11, 14, tzinfo=dt.UTC), -1e12):
        assert [r.id for r in app.runs(since=since, until=1_700_000_001)] == [run.id], since
    assert app.runs(until=dt.datetime(2023, 11, 14, 22, 13, 19, tzinfo=dt.UTC)) == []  # 1 s before the run
    found = app.runs(limit=1)
    assert app.runs(before=(found[0].created_at, found[0].id)) == []
    assert list(app.fork_many(since=dt.timedelta(seconds=1), from_failed=True).skipped) == [run.id]  # unfinished


# journal and children raised RunNotFoundError for an id never stored; attempts and forks
# answered [], as for a run with no failed attempt or no fork
UNKNOWN_RUN_CALLS: dict[str, Callable[[cf.Chainflow, str], Any]] = {
    "status": lambda app, rid: app.status(rid),
    "journal": lambda app, rid: app.journal(rid),
    "attempts": lambda app, rid: app.attempts(rid),
    "forks": lambda app, rid: app.forks(rid),
    "children": lambda app, rid: app.children(rid),
    "export": lambda app, rid: app.export(rid),
    "replay": lambda app, rid: app.replay(rid),
    "fork": lambda app, rid: app.fork(rid, from_failed=True),
}


def _answers(call: Callable[[cf.Chainflow, str], Any], app: cf.Chainflow, run_id: str) -> None:
    """``call`` on a stored run gets past the lookup (a pending run is no fork source)."""
    from chainflow.replay.fork import ForkError

    try:
        call(app, run_id)
    except ForkError as exc:
        assert "fork a finished run" in str(exc), exc


@pytest.mark.parametrize("call", list(UNKNOWN_RUN_CALLS))
def test_every_read_of_an_unknown_run_is_run_not_found(make_app: Callable[..., cf.Chainflow], call: str) -> None:
    app = make_app()
    app.workflow("echo")(_wf)
    known = app.start("echo").id
    _answers(UNKNOWN_RUN_CALLS[call], app, known)
    for unknown in ("nope", _ID, ""):
        with pytest.raises(cf.RunNotFoundError) as missing:
            UNKNOWN_RUN_CALLS[call](app, unknown)
        assert missing.value.run_id == unknown


# --- item 10: payloads ---------------------------------------------------------------------


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize("levels", [codec.MAX_DEPTH + 1, 600, 5_000])
def test_deep_payload_is_a_payload_error_naming_the_limit(levels: int) -> None:
    with pytest.raises(cf.PayloadError, match=f"more than {codec.MAX_DEPTH} levels"):
        codec.dumps(_nested(levels), what="input")
    with pytest.raises(cf.PayloadError, match=f"more than {codec.MAX_DEPTH} levels"):
        codec.loads("[" * 100_000 + "]" * 100_000)
    assert codec.loads(codec.dumps(_nested(codec.MAX_DEPTH))) == _nested(codec.MAX_DEPTH)


def test_huge_int_is_a_payload_error_naming_the_limit() -> None:
    limit = sys.get_int_max_str_digits()
    with pytest.raises(cf.PayloadError, match=f"more than {limit} digits"):
        codec.dumps({"amount": 10**5000}, what="input")
    with pytest.raises(cf.PayloadError, match=f"more than {limit} digits"):
        codec.loads('{"__cf__": "int", "v": "' + "9" * 5000 + '"}')
    wei = 10 ** (limit - 1)
    assert codec.loads(codec.dumps(wei)) == wei


def write_user_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, options: str = "") -> str:
    """A user module in the cwd, under a fresh name so sys.modules never serves a stale one."""
    name = f"badinput_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        import chainflow as cf

        app = cf.Chainflow("sqlite:///{tmp_path / 'user.db'}"{options})

        @app.workflow("echo")
        async def echo(ctx, inp):
            return inp
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHAINFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("CHAINFLOW_APP", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return name


@pytest.fixture
def user_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    return write_user_app(tmp_path, monkeypatch)


def assert_one_line_error(result: Any, *needles: str) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[:2000]
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ("[" * 100_000 + "]" * 100_000, f"more than {codec.MAX_DEPTH} levels"),  # too deep for json itself
        ("[" * 600 + "]" * 600, f"more than {codec.MAX_DEPTH} levels"),  # json reads it, the codec refuses
        ("1" * 5_000, f"more than {sys.get_int_max_str_digits()} digits"),
    ],
    ids=["100k-deep", "600-deep", "5000-digits"],
)
def test_cli_bad_payload_is_one_line(user_app: str, payload: str, needle: str) -> None:
    result = CliRunner().invoke(cli, ["--app", f"{user_app}:app", "start", "echo", "--input", payload])
    assert_one_line_error(result, needle)


def test_cli_refused_argument_is_one_line(user_app: str) -> None:
    started = CliRunner().invoke(cli, ["--app", f"{user_app}:app", "start", "echo"])
    assert started.exit_code == 0, started.stderr
    run_id = started.stdout.strip()
    too_long = "n" * (limits.SIGNAL_LENGTH + 1)
    result = CliRunner().invoke(cli, ["--app", f"{user_app}:app", "signal", run_id, too_long])
    assert_one_line_error(result, "signal name", f"limit is {limits.SIGNAL_LENGTH}")
    result = CliRunner().invoke(cli, ["--app", f"{user_app}:app", "start", "echo", "--key", "k" * 301])
    assert_one_line_error(result, "idempotency_key", f"limit is {limits.IDEMPOTENCY_KEY_LENGTH}")
    for lease in ("nan", "inf", "1e12"):
        assert CliRunner().invoke(cli, ["worker", f"{user_app}:app", "--lease", lease]).exit_code == 2


@pytest.mark.parametrize("call", ["wait", "await_run"])
async def test_client_waits_refuse_bad_timeouts(sqlite_app: cf.Chainflow, call: str) -> None:
    with pytest.raises(ValueError, match="timeout.*nan"):
        if call == "wait":
            sqlite_app.wait("any", timeout=NAN)
        else:
            await sqlite_app.await_run("any", timeout=NAN)
    with pytest.raises(ValueError, match="poll.*0"):
        if call == "wait":
            sqlite_app.wait("any", poll=0)
        else:
            await sqlite_app.await_run("any", poll=0)


# --- item 10: a locked SQLite file ------------------------------------------------------------


@pytest.fixture
def locked_db(tmp_path: Path) -> Iterator[Path]:
    """The schema in place, then another connection holding the write lock."""
    path = tmp_path / "user.db"
    setup = cf.Chainflow(f"sqlite:///{path}")
    setup.ensure_schema()
    setup.engine.dispose()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    yield path
    holder.execute("ROLLBACK")
    holder.close()


def _echo_app(url: str, **settings: Any) -> cf.Chainflow:
    app = cf.Chainflow(url, **settings)

    @app.workflow("echo")
    async def echo(ctx: cf.Context, inp: Any) -> Any:
        return inp

    return app


def test_locked_sqlite_file_fails_fast_and_names_file_and_timeout(locked_db: Path) -> None:
    app = _echo_app(f"sqlite:///{locked_db}", busy_timeout=0.3)
    began = time.monotonic()
    with pytest.raises(cf.DatabaseLockedError) as info:
        app.start("echo", 1)
    assert time.monotonic() - began < 5
    assert str(locked_db) in str(info.value) and "0.3s" in str(info.value) and "busy_timeout" in str(info.value)
    app.engine.dispose()


def _hold_write_lock(app: cf.Chainflow, seconds: float) -> threading.Thread:
    """A thread of this process holding ``app``'s write transaction for ``seconds``."""
    held = threading.Event()

    def hold() -> None:
        with app.engine.begin() as conn:
            held.set()
            time.sleep(seconds)
            conn.exec_driver_sql("SELECT 1")

    thread = threading.Thread(target=hold)
    thread.start()
    assert held.wait(10)
    return thread


def test_a_writer_queued_behind_its_own_process_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    """The process's writers queue on a lock of their own, not on SQLite's: waiting there
    is bounded by busy_timeout too, instead of for as long as the holder holds."""
    app = _echo_app(f"sqlite:///{tmp_path / 'one.db'}", busy_timeout=0.3)
    app.ensure_schema()
    holder = _hold_write_lock(app, 4.0)
    began = time.monotonic()
    with pytest.raises(cf.DatabaseLockedError) as info:
        app.start("echo", 1)
    waited = time.monotonic() - began
    holder.join()
    app.engine.dispose()
    assert waited < 3, waited
    assert "0.3s" in str(info.value)


def test_writes_to_another_sqlite_file_of_the_same_process_do_not_wait(tmp_path: Path) -> None:
    busy = _echo_app(f"sqlite:///{tmp_path / 'busy.db'}")
    other = _echo_app(f"sqlite:///{tmp_path / 'other.db'}")
    busy.ensure_schema()
    other.ensure_schema()
    holder = _hold_write_lock(busy, 4.0)
    began = time.monotonic()
    run_id = other.start("echo", 1).id
    waited = time.monotonic() - began
    holder.join()
    assert other.status(run_id).status == "pending"
    busy.engine.dispose()
    other.engine.dispose()
    assert waited < 3, waited


def test_cli_on_a_locked_sqlite_file_is_one_line(locked_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_app = write_user_app(locked_db.parent, monkeypatch, ", busy_timeout=0.3")
    began = time.monotonic()
    result = CliRunner().invoke(cli, ["--app", f"{user_app}:app", "start", "echo", "--input", "1"])
    assert time.monotonic() - began < 10
    assert_one_line_error(result, str(locked_db), "locked")


# --- item 10: database URLs -------------------------------------------------------------------


@pytest.mark.parametrize("url", ["", "   "])
def test_empty_database_url_is_refused(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cf.ConfigurationError, match="empty database URL"):
        cf.Chainflow(url)
    assert not (tmp_path / "chainflow.db").exists()


def test_empty_database_url_variable_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHAINFLOW_DATABASE_URL", "")
    with pytest.raises(cf.ConfigurationError, match="CHAINFLOW_DATABASE_URL"):
        cf.Chainflow()


@pytest.mark.parametrize("url", ["postgresql+asyncpg://u@localhost/db", "mysql://u@localhost/db",
                                 "sqlite+aiosqlite:///x.db", "postgresql+pg8000://u@localhost/db"])
def test_unsupported_driver_lists_the_supported_ones(url: str) -> None:
    with pytest.raises(cf.ConfigurationError) as info:
        cf.Chainflow(url)
    message = str(info.value)
    assert url.split("://")[0] in message
    assert "sqlite://" in message and "postgresql+psycopg://" in message


def test_a_sqlite_file_that_cannot_switch_to_wal_is_refused(tmp_path: Path) -> None:
    """SQLite stays in rollback-journal mode without an error where it has no shared
    memory for the WAL (a network share; here a VFS without locking): refused by name,
    from the library and from the CLI, instead of running with readers blocking the writer."""
    path = tmp_path / "share.db"
    url = f"sqlite:///file:{path}?vfs=unix-none&uri=true"
    with pytest.raises(cf.ConfigurationError, match=r"journal_mode=delete instead of switching it to WAL") as info:
        cf.Chainflow(url).ensure_schema()
    assert str(path) in str(info.value)
    assert_one_line_error(CliRunner().invoke(cli, ["--database-url", url, "runs"]), str(path), "WAL")


def test_a_file_uri_names_the_same_sqlite_file_as_its_path(tmp_path: Path) -> None:
    """One file, one writers' lock and one existence check, however the URL spells it."""
    path = tmp_path / "x.db"
    assert sqlite_file(make_url(f"sqlite:///{path}")) == str(path)
    assert sqlite_file(make_url(f"sqlite:///file:{path}?uri=true&mode=rwc")) == str(path)


# --- item 10: a chain node down, from the CLI ---------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_cli_nonces_with_the_node_down_is_one_line_and_closes_sessions(tmp_path: Path) -> None:
    db = tmp_path / "nodes.db"
    port = _closed_port()
    (tmp_path / "nodedown_app.py").write_text(textwrap.dedent(f"""
        import chainflow as cf
        from adapters.evm import EvmChain, LocalSigner

        # anvil's well-known first development key: test-only, holds nothing
        KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
        app = cf.Chainflow("sqlite:///{db}", chains=[
            EvmChain("local", rpc="http://127.0.0.1:{port}", signer=LocalSigner.from_key(KEY), timeout=2)])
    """))
    setup = cf.Chainflow(f"sqlite:///{db}")
    setup.ensure_schema()
    from chainflow.storage.schema import nonces

    with setup.engine.begin() as conn:
        conn.execute(nonces.insert().values(chain="local", sender="0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
                                            next_nonce=3))
    setup.engine.dispose()
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", "from chainflow.cli import main; main()",
         "--app", "nodedown_app:app", "nonces"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert time.monotonic() - began < 30
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[:3000]
    assert f"127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in proc.stderr and "Unclosed" not in proc.stderr



def test_cli_with_postgres_unreachable_is_one_line() -> None:
    """Guard (already one line before this change): a server that refuses connections."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/nope"
    assert_one_line_error(CliRunner().invoke(cli, ["--database-url", url, "runs"]), "cannot reach database")


def test_deep_payload_is_refused_even_with_a_raised_recursion_limit() -> None:
    """py-evm raises the recursion limit to 100,000 when imported (any process with the
    EVM devnet): the C JSON decoder then overflows the C stack on deep text, a segfault
    rather than a RecursionError.  Run in a child process so a regression shows as a
    failed test, not a dead test session."""
    probe = (
        "import sys; sys.setrecursionlimit(100_000)\n"
        "from chainflow import errors\nfrom chainflow.storage import codec\n"
        "for text in ('[' * 200_000 + ']' * 200_000, '{\"a\":' * 200_000):\n"
        "    try:\n"
        "        codec.loads(text)\n"
        "    except errors.PayloadError as exc:\n"
        "        assert 'more than' in str(exc), exc\n"
        "    else:\n"
        "        raise SystemExit('decoded a 200,000-deep text')\n"
        "    try:\n"
        "        codec.parse_json(text, what='--input')\n"
        "    except errors.PayloadError as exc:\n"
        "        assert str(exc).startswith('--input: '), exc\n"
        "print('refused')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "refused"
