"""Cancellation in every state a run can be in; compensations run newest first."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

import chainflow as cf
from chainflow.testing import WorkflowTester

from ._util import error_type, running_worker, wait_status, wait_until


def register_trip(app: cf.Chainflow, calls: Any, *, park: str, slow_undo: float = 0.0) -> None:
    """book flight, book hotel, then park (``sleep`` / ``wait`` / ``hang``), then pay."""

    def book(what: str) -> str:
        calls.hit(f"book {what}")
        return f"{what}-booking"

    def undo(booking: str | None) -> None:
        calls.hit(f"undo {booking}")
        if slow_undo:
            time.sleep(slow_undo)

    async def hang() -> None:
        calls.hit("hang-start")
        await asyncio.sleep(30)
        calls.hit("hang-end")

    @app.workflow("trip")
    async def trip(ctx: cf.Context, _: Any) -> None:
        await ctx.step("flight", book, "flight", compensate=undo)
        await ctx.step("hotel", book, "hotel", compensate=undo)
        if park == "sleep":
            await ctx.sleep("think", 86400)
        elif park == "wait":
            await ctx.wait_for("approval")
        else:
            await ctx.step("hang", hang, compensate=undo)
        await ctx.step("pay", book, "pay", compensate=undo)


def assert_cancelled_with_reverse_compensations(app: cf.Chainflow, run_id: str, calls: Any) -> None:
    st = app.status(run_id)
    assert st.status == "cancelled"
    assert error_type(st.error) == "chainflow.errors.RunCancelled"
    assert st.error is not None
    assert "compensation_failures" not in st.error
    assert st.compensations == {"hotel": "ok", "flight": "ok"}
    lines = calls.lines()
    assert "book pay" not in lines
    assert lines[-2:] == ["undo hotel-booking", "undo flight-booking"]
    assert calls.count("undo hotel-booking") == 1 and calls.count("undo flight-booking") == 1
    comp = [e.key for e in app.journal(run_id) if e.kind == "compensation"]
    assert comp == ["compensate:hotel", "compensate:flight"]


async def test_cancel_pending_run_runs_nothing(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    register_trip(app, calls, park="sleep")
    run_id = app.start("trip").id
    app.cancel(run_id)
    assert app.status(run_id).cancel_requested
    await WorkflowTester(app).run_until_idle()
    st = app.status(run_id)
    assert st.status == "cancelled"
    assert error_type(st.error) == "chainflow.errors.RunCancelled"
    assert calls.lines() == []
    assert app.journal(run_id) == []
    assert st.compensations == {}


async def test_cancel_sleeping_run_compensates_in_reverse(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    register_trip(app, calls, park="sleep")
    run_id = app.start("trip").id
    tester = WorkflowTester(app)
    await tester.run_until_idle(advance=False)
    assert app.status(run_id).status == "sleeping"
    app.cancel(run_id)
    await tester.run_until_idle(advance=False)  # no clock move needed: a cancel wakes it
    assert_cancelled_with_reverse_compensations(app, run_id, calls)


async def test_cancel_waiting_run_compensates_in_reverse(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    register_trip(app, calls, park="wait")
    run_id = app.start("trip").id
    tester = WorkflowTester(app)
    await tester.run_until_idle()
    st = app.status(run_id)
    assert st.status == "waiting" and st.waiting_on == ["approval"]
    app.cancel(run_id)
    await tester.run_until_idle()
    assert_cancelled_with_reverse_compensations(app, run_id, calls)
    with pytest.raises(cf.RunFinishedError):
        app.signal(run_id, "approval", True)


async def test_cancel_running_run_interrupts_async_step(
    make_app: Any, calls: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # short lease: the heartbeat (lease/3) is what notices the cancel; slow compensations
    # make sure several heartbeats happen while they run (a 0.3 s lease was lost to one
    # slow fsync on a busy CI machine, and the compensations rightly ran again)
    app = make_app(lease_seconds=0.75)
    register_trip(app, calls, park="hang", slow_undo=0.6)
    caplog.set_level(logging.ERROR, logger="chainflow")
    async with running_worker(app) as worker:
        run_id = app.start("trip").id
        await wait_until(lambda: calls.count("hang-start") == 1, what="the hanging step")
        app.cancel(run_id)
        await wait_status(app, run_id, timeout=20)  # the hanging step alone would take 30 s
        await asyncio.sleep(0.3)  # any late step would show up now
        assert worker.outcomes[run_id].status == "cancelled"
    assert "hang-end" not in calls.lines()  # the async step was interrupted
    assert_cancelled_with_reverse_compensations(app, run_id, calls)
    assert "hang" not in app.status(run_id).compensations  # it never completed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


async def test_cancel_finished_run_raises(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    @app.workflow("quick")
    async def quick(ctx: cf.Context, x: int) -> int:
        return x

    result = await WorkflowTester(app).run("quick", 1)
    with pytest.raises(cf.RunFinishedError, match="already completed"):
        app.cancel(result.run.id)
    with pytest.raises(cf.RunFinishedError) as info:
        app.signal(result.run.id, "anything", 1)
    assert info.value.status == "completed"
    assert app.status(result.run.id).status == "completed"
    with pytest.raises(cf.RunNotFoundError):
        app.cancel("no-such-run")


@pytest.mark.parametrize("timeout", [None, 5.0])
@pytest.mark.parametrize("stop", ["cancel", "sibling fails"])
async def test_a_sync_step_running_when_the_run_stops_is_compensated(make_app: Any, calls: Any, stop: str,
                                                                     timeout: float | None) -> None:
    """A cancel, or a sibling branch failing, while a sync step's thread runs: nothing
    can stop the thread, so its effect happens after the run began to stop -- and the
    step's compensation, given for exactly that effect, must run with the others (a
    step with a timeout is journaled stopped at once; its compensation waits for the
    thread)."""
    app = make_app(lease_seconds=0.6)  # the heartbeat, which brings the cancel, every 0.2 s

    def charge() -> str:
        calls.hit("charge-start")
        time.sleep(0.8)  # a blocking payment API call
        calls.hit("charged")
        return "ch_1"

    def declined() -> None:
        time.sleep(0.1)
        raise ValueError("declined")

    @app.workflow("pay")
    async def pay(ctx: cf.Context, _: Any) -> Any:
        charging = ctx.step("charge", charge, compensate=lambda charged: calls.hit(f"refunded {charged}"),
                            timeout=timeout)
        if stop == "cancel":
            return await charging
        return await ctx.gather(charging, ctx.step("decline", declined, retry=cf.Retry(max_attempts=1)))

    async with running_worker(app):
        run_id = (await app.astart("pay")).id
        if stop == "cancel":
            await wait_until(lambda: calls.count("charge-start") == 1, what="the charge to start")
            app.cancel(run_id)
        st = await wait_status(app, run_id, timeout=10)
    assert st.status == ("cancelled" if stop == "cancel" else "failed")
    assert calls.lines() == ["charge-start", "charged", "refunded ch_1"]
    assert st.compensations == {"charge" if stop == "cancel" else "0/charge": "ok"}
