"""Sagas: a failure compensates the completed steps newest first, each exactly once."""

from __future__ import annotations

from typing import Any

import pytest

import chainflow as cf
from chainflow.testing import WorkflowTester

from ._util import claim_count, error_type, running_worker, wait_status


class Declined(Exception):
    pass


def register_saga(app: cf.Chainflow, calls: Any, *, flaky_undo: int = 0, broken_undo: bool = False,
                  undo_retry: cf.Retry | None = None, pause: float = 600) -> None:
    def do(what: str) -> dict[str, str]:
        calls.hit(f"do {what}")
        return {"id": f"{what}-1"}

    def undo(output: dict[str, str]) -> None:
        calls.hit(f"undo {output['id']}")
        if output["id"] == "hotel-1":
            if broken_undo:
                raise RuntimeError("hotel refuses refunds")
            if calls.count("undo hotel-1") <= flaky_undo:
                raise RuntimeError("hotel API down")

    def charge() -> None:
        calls.hit("charge")
        raise Declined("card declined")

    @app.workflow("holiday")
    async def holiday(ctx: cf.Context, _: Any) -> None:
        await ctx.step("flight", do, "flight", compensate=undo)
        await ctx.step("hotel", do, "hotel", compensate=undo,
                       retry=undo_retry or cf.Retry(max_attempts=3, initial=5, jitter=0))
        await ctx.step("note", do, "note")  # nothing to undo
        await ctx.sleep("pause", pause)  # compensations must also cover steps from before a replay
        await ctx.step("car", do, "car", compensate=undo)
        await ctx.step("charge", charge, retry=cf.Retry(max_attempts=1))
        await ctx.step("never", do, "never", compensate=undo)


async def test_failure_compensates_completed_steps_in_reverse_once(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    register_saga(app, calls)
    result = await WorkflowTester(app).run("holiday")
    assert result.status == "failed"
    assert error_type(result.error) == "chainflow.errors.StepError"
    assert result.error is not None
    assert "charge" in result.error["message"] and "card declined" in result.error["message"]
    assert "compensation_failures" not in result.error
    assert calls.lines() == [
        "do flight", "do hotel", "do note", "do car", "charge",
        "undo car-1", "undo hotel-1", "undo flight-1",
    ]
    comp = [(e.key, e.status, e.attempts) for e in app.journal(result.run.id) if e.kind == "compensation"]
    assert comp == [("compensate:car", "ok", 1), ("compensate:hotel", "ok", 1), ("compensate:flight", "ok", 1)]
    assert result.run.compensations == {"car": "ok", "hotel": "ok", "flight": "ok"}
    assert list(result.run.compensations) == ["car", "hotel", "flight"]


async def test_compensation_is_retried_with_backoff(make_app: Any, calls: Any) -> None:
    clock = cf.FakeClock()
    app = make_app(clock=clock)
    register_saga(app, calls, flaky_undo=2)  # hotel undo fails twice, then works
    result = await WorkflowTester(app).run("holiday")
    assert result.status == "failed"
    assert result.error is not None
    assert "compensation_failures" not in result.error
    assert calls.count("undo hotel-1") == 3
    assert calls.count("undo car-1") == 1 and calls.count("undo flight-1") == 1
    undos = [line for line in calls.lines() if line.startswith("undo")]
    assert undos == ["undo car-1", "undo hotel-1", "undo hotel-1", "undo hotel-1", "undo flight-1"]
    tries = [a for a in app.attempts(result.run.id) if a.key == "compensate:hotel"]
    assert [a.attempt for a in tries] == [1, 2]
    assert [a.next_at - a.finished_at for a in tries] == [5.0, 10.0]  # the step's own policy
    comp = {e.key: (e.status, e.attempts) for e in app.journal(result.run.id) if e.kind == "compensation"}
    assert comp == {"compensate:car": ("ok", 1), "compensate:hotel": ("ok", 3), "compensate:flight": ("ok", 1)}
    assert result.run.compensations == {"car": "ok", "hotel": "ok", "flight": "ok"}


async def test_a_cancel_while_a_failed_run_compensates_keeps_the_failure(make_app: Any, calls: Any) -> None:
    """The run failed (the card was declined) and parked in its compensations (a refund
    backing off); a cancel arriving then cannot make it "cancelled": it had failed, its
    compensations finish, and it ends failed with the decline as its error."""
    clock = cf.FakeClock()
    app = make_app(clock=clock)
    register_saga(app, calls, flaky_undo=2, pause=1)
    tester = WorkflowTester(app)
    run_id = (await app.astart("holiday")).id
    await tester.run_until_idle(advance=False)
    clock.advance(2)  # past the pause: the charge fails, the hotel's undo fails and backs off 5 s
    await tester.run_until_idle(advance=False)
    assert calls.count("charge") == 1 and calls.count("undo hotel-1") == 1
    assert app.status(run_id).status == "sleeping"
    app.cancel(run_id)
    await tester.run_until_idle()
    st = app.status(run_id)
    assert st.status == "failed" and error_type(st.error) == "chainflow.errors.StepError", st.error
    assert st.error is not None and "card declined" in st.error["message"]
    assert st.compensations == {"car": "ok", "hotel": "ok", "flight": "ok"}
    # parked in a backoff, the cancelled run was not claimed again and again until it passed
    assert claim_count(app, run_id) <= 5


async def test_compensation_backoff_waited_inline_by_a_real_worker(make_app: Any, calls: Any) -> None:
    """Short backoffs in a compensation are waited in-process (real clock, no suspension)."""
    app = make_app()
    register_saga(app, calls, flaky_undo=1, undo_retry=cf.Retry(max_attempts=3, initial=0.05, jitter=0),
                  pause=0.05)
    async with running_worker(app, inline_wait=1.0) as worker:
        run_id = app.start("holiday").id
        st = await wait_status(app, run_id, timeout=10)
        assert worker.outcomes[run_id].status == "failed"
    assert claim_count(app, run_id) == 1  # one execution: never suspended
    assert st.status == "failed"
    assert st.compensations == {"car": "ok", "hotel": "ok", "flight": "ok"}
    assert calls.count("undo hotel-1") == 2
    (tried,) = [a for a in app.attempts(run_id) if a.key == "compensate:hotel"]
    assert round(tried.next_at - tried.finished_at, 6) == 0.05


async def test_failing_compensation_is_reported_and_others_still_run(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    register_saga(app, calls, broken_undo=True)
    result = await WorkflowTester(app).run("holiday")
    assert result.status == "failed"
    assert result.error is not None
    assert result.error["compensation_failures"] == ["compensate:hotel"]
    assert result.run.compensations == {"car": "ok", "hotel": "error", "flight": "ok"}
    assert calls.count("undo hotel-1") == 3  # retried up to the step's policy
    assert calls.count("undo flight-1") == 1


async def test_failed_branch_cancels_siblings_and_compensates_both(make_app: Any, calls: Any) -> None:
    import asyncio

    app = make_app(clock=cf.FakeClock())

    async def slow(what: str) -> str:
        calls.hit(f"start {what}")
        await asyncio.sleep(30)
        calls.hit(f"end {what}")
        return what

    def fail() -> None:
        calls.hit("fail")
        raise Declined("no")

    async def left(ctx: cf.Context) -> None:
        await ctx.step("reserve", calls.hit, "reserve L", compensate=lambda _: calls.hit("undo L"))
        await ctx.step("wait", slow, "L")

    async def right(ctx: cf.Context) -> None:
        await ctx.step("reserve", calls.hit, "reserve R", compensate=lambda _: calls.hit("undo R"))
        await ctx.step("fail", fail, retry=cf.Retry(max_attempts=1))

    @app.workflow("split")
    async def split(ctx: cf.Context, _: Any) -> None:
        await ctx.gather(left(ctx), right(ctx), names=["left", "right"])

    result = await asyncio.wait_for(WorkflowTester(app).run("split"), 10)
    assert result.status == "failed"
    assert "end L" not in calls.lines()  # the sibling was interrupted
    assert sorted(calls.lines()[-2:]) == ["undo L", "undo R"]
    comp = sorted((e.branch, e.key) for e in app.journal(result.run.id) if e.kind == "compensation")
    assert comp == [("left", "compensate:reserve"), ("right", "compensate:reserve")]


async def test_a_branch_failing_beside_a_waiting_one_fails_the_run_at_once(make_app: Any, calls: Any) -> None:
    """One branch waits for a signal that never comes, the other fails for good: the
    run fails then (its compensations run), rather than being parked on the waiting
    branch, where nothing would ever wake it to notice the failure."""
    app = make_app()

    async def waits(ctx: cf.Context) -> None:
        await ctx.wait_for("approval")

    async def fails(ctx: cf.Context) -> None:
        await ctx.step("reserve", calls.hit, "reserve", compensate=lambda _: calls.hit("undo reserve"))
        await ctx.step("charge", lambda: (_ for _ in ()).throw(Declined("card declined")),
                       retry=cf.Retry(max_attempts=1))

    @app.workflow("waits-and-fails")
    async def flow(ctx: cf.Context, _: Any) -> None:
        await ctx.gather(waits(ctx), fails(ctx), names=["waits", "fails"])

    async with running_worker(app):
        h = await app.astart("waits-and-fails")
        st = await wait_status(app, h.id, timeout=10)
    assert st.status == "failed" and error_type(st.error) == "chainflow.errors.StepError"
    assert calls.lines() == ["reserve", "undo reserve"]


@pytest.mark.parametrize("spins", range(2, 8))
async def test_a_sibling_cancelled_while_its_step_commits_is_compensated(make_app: Any, calls: Any,
                                                                        spins: int) -> None:
    """A branch whose step has returned is cancelled (a sibling failed) while its row
    waits in the group commit: the row still commits, so its effect is undone with the
    rest.  ``spins`` moves the failure across that window; another run in flight and a
    third busy branch keep the commit a shared one."""
    import asyncio

    app = make_app()
    go, release = asyncio.Event(), asyncio.Event()

    @app.workflow("other")
    async def other(ctx: cf.Context, _: Any) -> None:
        await ctx.step("hold", release.wait)

    async def charge() -> str:
        await go.wait()
        for _ in range(spins):
            await asyncio.sleep(0)
        calls.hit("charge L")
        return "L"

    def fail() -> None:
        calls.hit("fail R")
        go.set()
        raise Declined("no")

    async def left(ctx: cf.Context) -> None:
        await ctx.step("charge", charge, compensate=lambda _: calls.hit("refund L"))

    async def right(ctx: cf.Context) -> None:
        await ctx.step("fail", fail, retry=cf.Retry(max_attempts=1))

    async def slow(ctx: cf.Context) -> None:
        await ctx.step("slow", asyncio.Event().wait)

    @app.workflow("split")
    async def split(ctx: cf.Context, _: Any) -> None:
        await ctx.gather(left(ctx), right(ctx), slow(ctx), names=["left", "right", "slow"])

    async with running_worker(app):
        await app.astart("other")
        h = await app.astart("split")
        await wait_status(app, h.id)
        release.set()
    assert app.status(h.id).status == "failed"
    journal = app.journal(h.id)
    if any((e.branch, e.key, e.status) == ("left", "charge", "ok") for e in journal):  # recorded: undone
        assert ("left", "compensate:charge") in [(e.branch, e.key) for e in journal if e.kind == "compensation"]
        assert calls.lines().count("refund L") == 1


async def test_compensation_interrupted_by_shutdown_resumes_elsewhere(make_app: Any, calls: Any) -> None:
    import asyncio

    from ._util import wait_until

    def register(app: cf.Chainflow, hang: bool) -> None:
        async def undo(_: Any) -> None:
            calls.hit("undo-start")
            if hang:
                await asyncio.Event().wait()
            calls.hit("undo-done")

        def fail() -> None:
            raise Declined("no")

        @app.workflow("stuck-undo")
        async def stuck_undo(ctx: cf.Context, _: Any) -> None:
            await ctx.step("a", calls.hit, "a", compensate=undo)
            await ctx.step("b", fail, retry=cf.Retry(max_attempts=1))

    first = make_app(clock=cf.FakeClock())
    register(first, hang=True)
    run_id = first.start("stuck-undo").id
    worker = first.worker(poll_interval=0.02)
    await worker.start()
    await worker.poll()
    await wait_until(lambda: calls.count("undo-start") == 1, what="the compensation to start")
    await asyncio.wait_for(worker.close(), 5)  # interrupts the compensation, hands the run back
    assert worker.outcomes[run_id].status == "abandoned"
    assert first.status(run_id).status == "pending"

    second = make_app(clock=first.clock)
    register(second, hang=False)
    await WorkflowTester(second).run_until_idle()
    st = second.status(run_id)
    assert st.status == "failed" and st.compensations == {"a": "ok"}
    assert calls.lines() == ["a", "undo-start", "undo-start", "undo-done"]


async def test_a_failed_run_resuming_its_compensations_starts_no_new_step(make_app: Any, calls: Any) -> None:
    """A branch sleeps while its sibling fails; a compensation then parks on its retry
    backoff.  Each resume replays the workflow to rebuild the compensations, and by then
    the sleep is over: the sleeping branch's next step must not run for real -- the run
    has failed, and nothing would ever undo it.  The run still ends with its failure."""
    app = make_app(clock=cf.FakeClock())

    def release(_: str) -> None:
        calls.hit("release")
        if calls.count("release") < 3:
            raise ConnectionError("inventory service down")

    def charge() -> str:
        calls.hit("charge")
        return "charged"

    def declined() -> None:
        raise Declined("card declined")

    @app.workflow("order")
    async def order(ctx: cf.Context, _: Any) -> None:
        async def later() -> None:
            await ctx.sleep("settle-window", 30)
            await ctx.step("charge", charge)

        await ctx.step("reserve", lambda: "r", compensate=release,
                       retry=cf.Retry(max_attempts=5, initial=60, jitter=0))
        await ctx.gather(later(), ctx.step("decline", declined, retry=cf.Retry(max_attempts=1)))

    result = await WorkflowTester(app).run("order")
    assert result.status == "failed" and result.error is not None
    assert "card declined" in result.error["message"], result.error
    assert calls.count("release") == 3
    assert calls.count("charge") == 0, calls.lines()
