"""Retries with journaled backoff, non-retryable errors, step and workflow timeouts."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pytest

import chainflow as cf
from chainflow.testing import WorkflowTester

from ._util import error_type, running_worker, wait_status, wait_until


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


async def test_retry_attempts_and_exponential_backoff_are_journaled(make_app: Any, calls: Any) -> None:
    clock = cf.FakeClock()
    app = make_app(clock=clock)
    policy = cf.Retry(max_attempts=4, backoff="exponential", initial=2.0, multiplier=3.0, jitter=0)

    def shaky() -> str:
        calls.hit("shaky")
        n = calls.count("shaky")
        if n <= 2:
            raise Flaky(f"boom {n}")
        return f"ok after {n}"

    @app.workflow("retrying")
    async def retrying(ctx: cf.Context, _: Any) -> str:
        return await ctx.step("shaky", shaky, retry=policy)

    started = clock.time()
    result = await WorkflowTester(app).run("retrying")
    assert result.status == "completed", result.error
    assert result.output == "ok after 3"
    assert calls.count("shaky") == 3

    tries = app.attempts(result.run.id)
    assert [a.attempt for a in tries] == [1, 2]
    assert [a.key for a in tries] == ["shaky", "shaky"]
    assert [error_type(a.error) for a in tries] == [f"{__name__}.Flaky"] * 2
    assert [a.error["message"] for a in tries] == ["boom 1", "boom 2"]
    assert [a.next_at - a.finished_at for a in tries] == [2.0, 6.0]  # 2 * 3**0, 2 * 3**1
    entry = result.steps["shaky"]
    assert entry.status == "ok" and entry.attempts == 3
    assert entry.attempt_errors == [a.error for a in tries]
    # the tester only ever jumped to journaled wake-ups: the backoff was really waited
    assert clock.time() - started >= 8.0
    (row,) = app.journal(result.run.id)
    assert row.started_at >= tries[-1].next_at


async def test_exhausted_retries_surface_as_step_error(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    def always() -> None:
        calls.hit("always")
        raise Flaky("still broken")

    @app.workflow("give-up")
    async def give_up(ctx: cf.Context, _: Any) -> dict[str, Any]:
        try:
            await ctx.step("always", always, retry=cf.Retry(max_attempts=3, initial=1, jitter=0))
        except cf.StepError as exc:
            return {"step": exc.step, "type": exc.error_type, "message": exc.message, "attempts": exc.attempts}
        raise AssertionError("unreachable")

    result = await WorkflowTester(app).run("give-up")
    assert result.status == "completed", result.error
    assert result.output == {"step": "always", "type": f"{__name__}.Flaky", "message": "still broken",
                             "attempts": 3}
    assert calls.count("always") == 3
    assert result.steps["always"].status == "error"
    assert result.steps["always"].attempts == 3
    assert len(app.attempts(result.run.id)) == 2  # the two retried failures; the last is the entry


async def test_non_retryable_exception_is_not_retried(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    def refuse() -> None:
        calls.hit("refuse")
        raise Fatal("card declined")

    @app.workflow("declined")
    async def declined(ctx: cf.Context, _: Any) -> None:
        await ctx.step("refuse", refuse, retry=cf.Retry(max_attempts=5, non_retryable=(Fatal,)))

    result = await WorkflowTester(app).run("declined")
    assert result.status == "failed"
    assert calls.count("refuse") == 1
    assert app.attempts(result.run.id) == []
    assert error_type(result.error) == "chainflow.errors.StepError"
    assert result.error is not None
    assert "refuse" in result.error["message"] and "card declined" in result.error["message"]
    assert result.steps["refuse"].status == "error" and result.steps["refuse"].attempts == 1


async def test_async_step_timeout_interrupts_the_step(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    async def stuck() -> None:
        calls.hit("stuck-start")
        await asyncio.sleep(30)
        calls.hit("stuck-end")

    @app.workflow("timing-out")
    async def timing_out(ctx: cf.Context, _: Any) -> Any:
        try:
            await ctx.step("stuck", stuck, timeout=0.1,
                           retry=cf.Retry(max_attempts=2, initial=1, jitter=0))
        except cf.StepError as exc:
            return exc.error_type
        raise AssertionError("unreachable")

    result = await WorkflowTester(app).run("timing-out")  # its 30 s sleeps are what a missed timeout costs
    assert result.status == "completed", result.error
    assert result.output == "chainflow.errors.StepTimeout"
    assert calls.counts() == {"stuck-start": 2}  # retried once, never ran to its end
    (first,) = app.attempts(result.run.id)
    assert error_type(first.error) == "chainflow.errors.StepTimeout"


async def test_workflow_timeout_while_parked_fails_and_compensates(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    @app.workflow("deadline", timeout=60)
    async def deadline(ctx: cf.Context, _: Any) -> None:
        await ctx.step("hold", calls.hit, "hold", compensate=lambda _: calls.hit("release"))
        await ctx.sleep("long", 3600)
        await ctx.step("late", calls.hit, "late")

    result = await WorkflowTester(app).run("deadline")
    assert result.status == "failed"
    assert error_type(result.error) == "chainflow.errors.WorkflowTimeout"
    assert calls.lines() == ["hold", "release"]
    assert result.run.compensations == {"hold": "ok"}
    assert result.run.updated_at - result.run.created_at < 3600


async def test_workflow_timeout_interrupts_running_async_step(make_app: Any, calls: Any) -> None:
    app = make_app(lease_seconds=5)  # real clock: the deadline is wall time

    async def forever() -> None:
        calls.hit("forever-start")
        await asyncio.sleep(30)
        calls.hit("forever-end")

    @app.workflow("hung", timeout=3)  # long enough to claim the run on a loaded machine
    async def hung(ctx: cf.Context, _: Any) -> None:
        await ctx.step("forever", forever)
        await ctx.step("after", calls.hit, "after")

    async with running_worker(app):
        run_id = app.start("hung").id
        st = await wait_status(app, run_id, timeout=20)  # well before the step's 30 s would end on its own
    assert st.status == "failed"
    assert error_type(st.error) == "chainflow.errors.WorkflowTimeout"
    assert calls.lines() == ["forever-start"]
    assert [e.key for e in app.journal(run_id)] == []


@pytest.mark.parametrize("bad", [0, -1])
def test_retry_policy_validated(bad: int) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        cf.Retry(max_attempts=bad)


def test_backoff_delays() -> None:
    exp = cf.Retry(initial=0.5, multiplier=2, max_delay=3, jitter=0)
    assert [exp.delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [cf.Retry(backoff="linear", initial=1, jitter=0).delay(n) for n in (1, 2, 3)] == [1, 2, 3]
    jittered = cf.Retry(initial=10, jitter=0.1, max_delay=100)
    assert all(10 <= jittered.delay(1) <= 11 for _ in range(50))


async def test_workflow_sees_step_error_not_original_type_on_replay(make_app: Any, calls: Any) -> None:
    """A failed step replayed from the journal raises the same StepError as the first time."""
    app = make_app(clock=cf.FakeClock())

    def bad() -> None:
        calls.hit("bad")
        raise Fatal("nope")

    @app.workflow("replayed-failure")
    async def replayed_failure(ctx: cf.Context, _: Any) -> list[str]:
        seen = []
        try:
            await ctx.step("bad", bad, retry=cf.Retry(max_attempts=1))
        except cf.StepError as exc:
            seen.append(f"{exc.step}|{exc.error_type}|{exc.message}|{exc.attempts}")
        await ctx.sleep("nap", 60)  # the rest runs on a replay, which re-raises from the journal
        return seen

    result = await WorkflowTester(app).run("replayed-failure")
    assert result.status == "completed", result.error
    assert result.output == [f"bad|{__name__}.Fatal|nope|1"]
    assert calls.count("bad") == 1


async def test_workflow_timeout_while_waiting_for_a_signal(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    @app.workflow("patient", timeout=3600)
    async def patient(ctx: cf.Context, _: Any) -> Any:
        await ctx.step("ask", calls.hit, "ask", compensate=lambda _: calls.hit("withdraw"))
        return await ctx.wait_for("answer")  # no timeout of its own

    tester = WorkflowTester(app)
    run_id = app.start("patient").id
    await tester.run_until_idle(advance=False)
    st = app.status(run_id)
    assert st.status == "waiting" and st.wake_at == st.created_at + 3600  # bounded by the deadline
    await tester.run_until_idle()
    st = app.status(run_id)
    assert st.status == "failed"
    assert error_type(st.error) == "chainflow.errors.WorkflowTimeout"
    assert calls.lines() == ["ask", "withdraw"]


async def test_cancel_during_retry_backoff(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    def flaky() -> None:
        calls.hit("flaky")
        raise Flaky("try later")

    @app.workflow("backing-off")
    async def backing_off(ctx: cf.Context, _: Any) -> None:
        await ctx.step("first", calls.hit, "first", compensate=lambda _: calls.hit("undo first"))
        await ctx.step("flaky", flaky, retry=cf.Retry(max_attempts=5, initial=3600, jitter=0))

    tester = WorkflowTester(app)
    run_id = app.start("backing-off").id
    await tester.run_until_idle(advance=False)
    st = app.status(run_id)
    assert st.status == "sleeping" and st.wake_at == app.attempts(run_id)[0].next_at
    app.cancel(run_id)
    await tester.run_until_idle()
    assert app.status(run_id).status == "cancelled"
    assert calls.lines() == ["first", "flaky", "undo first"]


class _SlowClient:
    """A callable object whose ``__call__`` is a coroutine function."""

    async def __call__(self) -> str:
        await asyncio.sleep(3)
        return "late"


async def _slow() -> str:
    await asyncio.sleep(3)
    return "late"


@pytest.mark.parametrize("how", ["object", "lambda"])
async def test_a_step_timeout_bounds_an_awaitable_its_callable_returns(make_app: Any, how: str) -> None:
    """A callable that hands back an awaitable (an object with ``async def __call__``, a
    lambda around an async function) runs in a thread, and the engine awaits what it
    returns: the step's timeout bounds both."""
    app = make_app(clock=cf.FakeClock())
    work = _SlowClient() if how == "object" else (lambda: _slow())

    @app.workflow("bounded")
    async def bounded(ctx: cf.Context, _: Any) -> str:
        try:
            return await ctx.step("call", work, timeout=0.2, retry=cf.Retry(max_attempts=1))
        except cf.StepError as exc:
            return exc.error_type

    result = await asyncio.wait_for(WorkflowTester(app).run("bounded"), 2)
    assert result.output == "chainflow.errors.StepTimeout"


async def test_a_sync_step_that_timed_out_waiting_for_a_thread_never_runs(make_app: Any, calls: Any) -> None:
    """Every step thread busy: the attempt times out in the queue, is journaled failed
    and never compensated -- so it must not run once a thread frees up."""
    app = make_app()

    def busy(i: int) -> int:
        time.sleep(1.0)
        return i

    def pay() -> str:
        calls.hit("pay")
        return "paid"

    @app.workflow("hog")
    async def hog(ctx: cf.Context, _: Any) -> Any:
        async def leg(i: int) -> Any:
            return await ctx.step("busy", busy, i)

        async def paying() -> Any:
            await asyncio.sleep(0.05)  # queued behind the busy steps
            return await ctx.step("pay", pay, timeout=0.3, retry=cf.Retry(max_attempts=1))

        return await ctx.gather(leg(0), leg(1), leg(2), leg(3), paying())

    async with running_worker(app, concurrency=1):  # four step threads, all taken by "busy"
        run_id = (await app.astart("hog")).id
        assert (await wait_status(app, run_id, timeout=15)).status == "failed"
        (entry,) = [e for e in app.journal(run_id) if e.key == "pay"]
        assert entry.status == "error"
        await asyncio.sleep(1.5)  # the busy threads free up
    assert calls.count("pay") == 0, "an attempt the run gave up on in the queue ran anyway"


async def test_a_caught_step_error_reads_the_same_on_replay(make_app: Any) -> None:
    """What workflow code sees of a StepError (step label, error type) is what it saw the
    first time when the replay re-raises it from the journal: a handler that decides on
    it (here, names a step after it) takes the same path."""
    app = make_app(clock=cf.FakeClock())

    def declined() -> None:
        raise Fatal("declined")

    def unstorable() -> Any:
        yield 1

    async def caught(ctx: cf.Context, name: str, fn: Any) -> list[str]:
        try:
            await ctx.step(name, fn, retry=cf.Retry(max_attempts=1))
        except cf.StepError as exc:
            return [exc.step, exc.error_type]
        return []

    @app.workflow("handled")
    async def handled(ctx: cf.Context, _: Any) -> list[Any]:
        await ctx.step("pay", lambda: "paid")
        seen = [await caught(ctx, "pay", declined)]  # the second "pay": label pay#1
        seen += await ctx.gather(caught(ctx, "bad", declined))  # in branch 0: label 0/bad
        seen.append(await caught(ctx, "gen", unstorable))
        first = await ctx.step("seen", lambda: seen)  # journaled: what the first execution saw
        await ctx.sleep("nap", 60)  # what follows runs on a replay, which re-raises from the journal
        return [first, seen]

    result = await WorkflowTester(app).run("handled")
    assert result.status == "completed", result.error
    first, replayed = result.output
    assert first[:2] == [["pay#1", f"{__name__}.Fatal"], ["0/bad", f"{__name__}.Fatal"]]
    assert first[2] == ["gen", "chainflow.errors.PayloadError"]
    assert replayed == first


def _exits() -> None:
    sys.exit(3)  # a library deep in a step calling sys.exit (argparse, click, ...)


async def _exits_later() -> None:
    await asyncio.sleep(0.01)
    sys.exit(3)


@pytest.mark.parametrize("where", ["sync step", "async step with a timeout", "workflow code", "branch code"])
def test_a_base_exception_raised_by_one_runs_code_fails_that_run_not_the_worker(make_app: Any, where: str) -> None:
    """SystemExit or KeyboardInterrupt out of a step or workflow code: asyncio re-raises
    both out of the event loop, which would end the worker and every run in flight
    with it (and again at each restart, on the same run).  It fails its run instead.
    The worker runs on a thread of its own here, where the loop's end is seen, not felt."""
    app = make_app()

    @app.workflow("victim")
    async def victim(ctx: cf.Context, _: Any) -> None:
        if where == "sync step":
            await ctx.step("exits", _exits, retry=cf.Retry(max_attempts=1))
        elif where == "async step with a timeout":
            await ctx.step("exits", _exits_later, timeout=5, retry=cf.Retry(max_attempts=1))
        else:
            await ctx.step("first", lambda: 1)

            async def interrupt() -> None:
                await asyncio.sleep(0.05)
                raise KeyboardInterrupt("raised by workflow code")

            await (ctx.gather(interrupt()) if where == "branch code" else interrupt())

    @app.workflow("bystander")
    async def bystander(ctx: cf.Context, _: Any) -> str:
        await ctx.step("a", lambda: 1)
        await asyncio.sleep(0.5)
        await ctx.step("b", lambda: 2)
        return "done"

    ended: list[BaseException | None] = []

    def in_thread() -> None:
        async def scenario() -> None:
            async with running_worker(app):
                ids = [(await app.astart(name)).id for name in ("bystander", "victim")]
                for run_id in ids:
                    await wait_status(app, run_id, timeout=10)
        try:
            asyncio.run(scenario())
            ended.append(None)
        except BaseException as exc:  # noqa: BLE001 - what ended the worker's loop
            ended.append(exc)

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join(20)
    assert ended == [None], f"the worker's loop ended with {ended!r}"
    (bystanding,) = app.runs(workflow="bystander")
    (failed,) = app.runs(workflow="victim")
    assert bystanding.status == "completed" and failed.status == "failed"
    assert failed.error is not None and ("SystemExit" in failed.error["message"]
                                         or "KeyboardInterrupt" in failed.error["message"]), failed.error


async def test_a_cancelled_error_a_step_raises_itself_is_its_failure(make_app: Any, calls: Any) -> None:
    """``asyncio.CancelledError`` out of a step's own code (a library's pool shut down
    under it), not a cancel of the run: the step failed, and is retried like any."""
    app = make_app(clock=cf.FakeClock())

    async def flaky() -> str:
        calls.hit("try")
        if calls.count("try") < 3:
            raise asyncio.CancelledError("connection pool shut down under us")
        return "ok"

    @app.workflow("flaky")
    async def flow(ctx: cf.Context, _: Any) -> str:
        return await ctx.step("flaky", flaky, retry=cf.Retry(max_attempts=3, initial=0.01, jitter=0))

    result = await WorkflowTester(app).run("flaky")
    assert (result.status, result.output) == ("completed", "ok"), result.error
    assert calls.count("try") == 3


class _Spans:
    """When each attempt of a sync step ran in its thread, from the thread's own clock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans: list[tuple[float, float]] = []

    def ran(self, started: float) -> None:
        with self._lock:
            self.spans.append((started, time.monotonic()))

    def overlaps(self) -> list[tuple[tuple[float, float], tuple[float, float]]]:
        with self._lock:
            spans = sorted(self.spans)
        return [(a, b) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]


async def test_a_retry_waits_for_the_thread_of_the_attempt_that_timed_out(make_app: Any) -> None:
    """A sync step's timeout cannot stop its thread: the next attempt starts only once
    that thread has ended, so two attempts of one step never execute together.  Each
    timeout still fires, and is journaled, on time."""
    app = make_app()
    spans = _Spans()

    def slow() -> None:
        started = time.monotonic()
        time.sleep(0.6)
        spans.ran(started)

    @app.workflow("slow")
    async def flow(ctx: cf.Context, _: Any) -> None:
        await ctx.step("slow", slow, timeout=0.15, retry=cf.Retry(max_attempts=3, initial=0.01, jitter=0))

    async with running_worker(app):
        run_id = (await app.astart("slow")).id
        st = await wait_status(app, run_id, timeout=15)
        await wait_until(lambda: len(spans.spans) == 3, timeout=5, what="the three attempts' threads to end")
    assert st.status == "failed"
    assert st.error is not None and "StepTimeout" in st.error["message"]
    assert spans.overlaps() == [], "an attempt ran beside the earlier one its timeout gave up on"
    tries = app.attempts(run_id)
    (entry,) = app.journal(run_id)
    assert [error_type(a.error) for a in tries] == ["chainflow.errors.StepTimeout"] * 2
    # the timeouts fired on time; the waiting is between attempts, after the backoff
    durations = [a.finished_at - a.started_at for a in tries] + [entry.finished_at - entry.started_at]
    assert all(d < 0.5 for d in durations), durations
    assert tries[1].started_at - tries[0].finished_at >= 0.4
    assert entry.started_at - tries[1].finished_at >= 0.4


@pytest.mark.parametrize("ends", ["returns a value", "returns None", "raises"])
async def test_a_last_attempt_that_timed_out_is_compensated_once_its_thread_ends(make_app: Any, calls: Any,
                                                                                 ends: str) -> None:
    """Retries exhausted by a timeout: the step fails at once with StepTimeout, but the
    thread goes on, and what it does is the effect ``compensate=`` was given for.  The
    compensation waits for it (never racing it) and undoes what it returned; a thread
    that raised did nothing to undo."""
    app = make_app()

    def charge() -> str | None:
        calls.hit("charge-start")
        time.sleep(0.5)
        calls.hit("charge-end")
        if ends == "raises":
            raise Flaky("declined, late")
        return "ch_1" if ends == "returns a value" else None

    @app.workflow("pay")
    async def pay(ctx: cf.Context, _: Any) -> None:
        await ctx.step("charge", charge, timeout=0.1, retry=cf.Retry(max_attempts=1),
                       compensate=lambda charged: calls.hit(f"refund {charged}"))

    async with running_worker(app):
        run_id = (await app.astart("pay")).id
        st = await wait_status(app, run_id, timeout=10)
        await wait_until(lambda: calls.count("charge-end") == 1, timeout=5, what="the charge's thread to end")
    assert st.status == "failed"
    assert st.error is not None and "StepTimeout" in st.error["message"]
    (entry,) = [e for e in app.journal(run_id) if e.key == "charge"]
    assert entry.status == "error" and entry.finished_at - entry.started_at < 0.4  # failed on time
    if ends == "raises":
        assert calls.lines() == ["charge-start", "charge-end"]
        assert st.compensations == {}
    else:
        refunded = "refund ch_1" if ends == "returns a value" else "refund None"
        assert calls.lines() == ["charge-start", "charge-end", refunded]
        assert st.compensations == {"charge": "ok"}


async def test_a_thread_that_never_returns_holds_only_its_own_run(make_app: Any, calls: Any) -> None:
    """A timed-out attempt whose thread hangs: its run waits for it (still running,
    holding its lease), the worker's other runs go on, a cancel still ends it at once
    (the hung step has no compensate=, so nothing waits for its thread any more, and the
    other compensations, backoff included, run without it), and a run whose hung thread
    finally returns takes its next attempt then."""
    # the heartbeat, which brings the cancel, every 0.5 s; a lease any shorter could lapse
    # on a loaded machine, and a run whose lease lapsed is retried elsewhere (``_execute``)
    app = make_app(lease_seconds=1.5)
    gate = threading.Event()

    def hang(tag: str) -> str:
        calls.hit(f"{tag} try")
        if calls.count(f"{tag} try") == 1:
            gate.wait(20)
        return tag

    def release(_: Any) -> None:
        calls.hit("release")
        if calls.count("release") == 1:
            raise Flaky("the lock service blinked")

    @app.workflow("hung")
    async def hung(ctx: cf.Context, tag: str) -> str:
        await ctx.step("reserve", lambda: None,
                       compensate=release, retry=cf.Retry(max_attempts=2, initial=0.05, jitter=0))
        return await ctx.step("hang", hang, tag, timeout=0.1, retry=cf.Retry(max_attempts=2, initial=0.01))

    @app.workflow("other")
    async def other(ctx: cf.Context, _: Any) -> int:
        return await ctx.step("one", lambda: 1)

    try:
        async with running_worker(app):
            waiting = (await app.astart("hung", "waiting")).id
            cancelled = (await app.astart("hung", "cancelled")).id
            await wait_until(lambda: len(app.attempts(waiting)) == 1 and len(app.attempts(cancelled)) == 1,
                             what="both first attempts to time out")
            bystander = (await app.astart("other")).id
            assert (await wait_status(app, bystander)).status == "completed"
            await app.acancel(cancelled)
            assert (await wait_status(app, cancelled)).status == "cancelled"
            assert (await app.astatus(waiting)).status == "running"
            assert calls.counts() == {"waiting try": 1, "cancelled try": 1, "release": 2}
            gate.set()
            st = await wait_status(app, waiting)
    finally:
        gate.set()
    assert (st.status, st.output) == ("completed", "waiting")
    assert calls.counts() == {"waiting try": 2, "cancelled try": 1, "release": 2}
