"""Versioning in-flight runs: ``ctx.patched`` keeps runs recorded before a change on the
old path after new code is deployed, and new runs on the new one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import chainflow as cf
from chainflow.testing import WorkflowTester, assert_unchanged

from ._util import live_keys, running_worker, wait_status


def register_unpatched(app: cf.Chainflow, calls: Any, fee: tuple[str, str], pay: tuple[str, str],
                       result: int) -> None:
    """A payout without ``patched``: ``fee`` and ``pay`` are (step name, what it does)."""

    @app.workflow("payout")
    async def payout(ctx: cf.Context, amount: int) -> int:
        await ctx.step(fee[0], calls.hit, fee[1])
        await ctx.wait_for("approve")
        await ctx.step(pay[0], calls.hit, f"{pay[1]} {amount}")
        return result


def register_v1(app: cf.Chainflow, calls: Any) -> None:
    register_unpatched(app, calls, ("fee", "flat fee"), ("pay", "pay"), 100)


def register_v2(app: cf.Chainflow, calls: Any) -> None:
    """The fee became a percentage: runs that charged the flat fee keep paying as before."""

    @app.workflow("payout")
    async def payout(ctx: cf.Context, amount: int) -> int:
        if ctx.patched("percent-fee"):
            await ctx.step("fee-percent", calls.hit, "percent fee")
        else:
            await ctx.step("fee", calls.hit, "flat fee")
        await ctx.wait_for("approve")
        if ctx.patched("percent-fee"):  # the same answer on every call of the run
            await ctx.step("pay-net", calls.hit, f"pay net {amount}")
            return 99
        await ctx.step("pay", calls.hit, f"pay {amount}")
        return 100


def register_v2_unpatched(app: cf.Chainflow, calls: Any) -> None:
    @app.workflow("payout")
    async def payout(ctx: cf.Context, amount: int) -> int:
        await ctx.step("fee-percent", calls.hit, "percent fee")
        await ctx.wait_for("approve")
        return 99


def register_v3(app: cf.Chainflow, calls: Any) -> None:
    """v2 with the change retired, once no run in flight answered False."""
    register_unpatched(app, calls, ("fee-percent", "percent fee"), ("pay-net", "pay net"), 99)


async def parked(app: cf.Chainflow, run_id: str, *signals: str) -> None:
    deadline = time.monotonic() + 10
    while not set(signals or ("approve",)) <= set((await app.astatus(run_id)).waiting_on):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


Deploy = Callable[[cf.Chainflow], object]  # registers one version of workflow "payout"


def flow(fn: Callable[[cf.Context, Any], Awaitable[Any]]) -> Deploy:
    return lambda app: app.workflow("payout")(fn)


async def redeployed(make_app: Any, old: Deploy, new: Deploy, *signals: str) -> tuple[cf.Chainflow, str]:
    """A run of ``payout(5)`` on the ``old`` code parked on ``signals``, then sent them
    and finished by the ``new`` code (the deploy: another app on the same database)."""
    app = make_app()
    old(app)
    run_id = app.start("payout", 5).id
    async with running_worker(app):
        await parked(app, run_id, *signals)
    app = make_app()
    new(app)
    async with running_worker(app):
        for name in signals:
            app.signal(run_id, name)
        await wait_status(app, run_id)
    return app, run_id


async def test_in_flight_run_keeps_the_old_path_and_a_new_run_takes_the_new_one(make_app: Any,
                                                                                calls: Any) -> None:
    old = make_app()
    register_v1(old, calls)
    before = old.start("payout", 5).id
    async with running_worker(old):
        await parked(old, before)

    new = make_app()  # the deploy: another process with the new code, same database
    register_v2(new, calls)
    async with running_worker(new):
        after = new.start("payout", 7).id
        await parked(new, after)
        new.signal(before, "approve")
        new.signal(after, "approve")
        st_before, st_after = await wait_status(new, before), await wait_status(new, after)
    assert (st_before.status, st_before.output) == ("completed", 100), st_before.error
    assert (st_after.status, st_after.output) == ("completed", 99), st_after.error
    assert [k for _, k, kind in live_keys(new, before) if kind == "step"] == ["fee", "pay"]
    assert [k for _, k, kind in live_keys(new, after) if kind == "step"] == ["fee-percent", "pay-net"]
    # the answers are journaled, once per run
    patches = {rid: [(e.key, e.output) for e in new.journal(rid) if e.kind == "patch"] for rid in (before, after)}
    assert patches == {before: [("percent-fee#patch", False)], after: [("percent-fee#patch", True)]}
    assert sorted(calls.lines()) == ["flat fee", "pay 5", "pay net 7", "percent fee"]


async def test_changed_code_without_a_patch_fails_pointing_at_patched(make_app: Any, calls: Any) -> None:
    app, run_id = await redeployed(make_app, lambda app: register_v1(app, calls),
                                   lambda app: register_v2_unpatched(app, calls), "approve")
    message = nondeterminism(app, run_id)
    assert "ctx.patched(" in message and "'step fee'" in message


def test_replay_answers_patched_as_recorded_and_not_after_the_change_is_retired(make_app: Any,
                                                                                calls: Any) -> None:
    """A replay of the finished run against the patched code reports no change, and
    neither does one (a CI gate: ``replay_sweep``, ``testing.assert_unchanged``) against
    the code that retired the change: an answer True nobody asks for any more is no
    operation of the run."""
    app = make_app(clock=cf.FakeClock())
    register_v2(app, calls)

    tester = WorkflowTester(app)
    run_id = app.start("payout", 3).id
    asyncio.run(tester.run_until_idle())
    app.signal(run_id, "approve")
    asyncio.run(tester.run_until_idle())
    assert app.status(run_id).output == 99
    assert_unchanged(app.replay(run_id))
    retired = make_app(clock=cf.FakeClock())
    register_v3(retired, calls)
    assert_unchanged(retired.replay(run_id))


def nondeterminism(app: cf.Chainflow, run_id: str) -> str:
    """The message of the run's NonDeterminismError, which failed it."""
    st = app.status(run_id)
    assert st.status == "failed" and st.error is not None, (st.status, st.error)
    assert st.error["type"] == "chainflow.errors.NonDeterminismError", st.error
    return str(st.error["message"])


async def test_new_code_failing_before_journaled_steps_is_nondeterminism(make_app: Any, calls: Any) -> None:
    """v1 reserved and charged (each undoable) and waits for approval; v2 dropped the
    charge and fails a new check after the reserve.  Failing the run would release the
    reserve and never refund the charge, whose compensation the new code never
    registers: the run stops with NonDeterminismError naming the charge instead, and
    nothing is compensated, as when the new code asks for another operation there."""
    async def v1(ctx: cf.Context, _: Any) -> None:
        await ctx.step("reserve", calls.hit, "reserve", compensate=lambda _: calls.hit("release"))
        await ctx.step("charge", calls.hit, "charge", compensate=lambda _: calls.hit("refund"))
        await ctx.wait_for("approve")

    async def v2(ctx: cf.Context, _: Any) -> None:
        await ctx.step("reserve", calls.hit, "reserve", compensate=lambda _: calls.hit("release"))
        raise ValueError("over the new limit")

    app, run_id = await redeployed(make_app, flow(v1), flow(v2), "approve")
    message = nondeterminism(app, run_id)
    assert "position 1 the journal holds 'step charge'" in message, message
    assert sorted(calls.lines()) == ["charge", "reserve"]
    assert app.status(run_id).compensations == {}


async def test_new_code_returning_before_journaled_steps_is_nondeterminism(make_app: Any, calls: Any) -> None:
    async def v1(ctx: cf.Context, _: Any) -> str:
        await ctx.step("charge", calls.hit, "charge", compensate=lambda _: calls.hit("refund"))
        await ctx.wait_for("approve")
        await ctx.step("ship", calls.hit, "ship")
        return "shipped"

    async def v2(ctx: cf.Context, _: Any) -> str:
        return "nothing to do"

    app, run_id = await redeployed(make_app, flow(v1), flow(v2), "approve")
    assert "position 0 the journal holds 'step charge'" in nondeterminism(app, run_id)
    assert calls.lines() == ["charge"]


async def test_a_branch_ending_before_its_journaled_steps_is_nondeterminism(make_app: Any, calls: Any) -> None:
    async def v1(ctx: cf.Context, _: Any) -> None:
        async def legs() -> None:
            await ctx.step("debit", calls.hit, "debit")
            await ctx.step("credit", calls.hit, "credit")

        await ctx.gather(legs(), ctx.wait_for("approve"))

    async def v2(ctx: cf.Context, _: Any) -> None:
        async def legs() -> None:
            await ctx.step("debit", calls.hit, "debit")

        await ctx.gather(legs(), ctx.wait_for("approve"))

    app, run_id = await redeployed(make_app, flow(v1), flow(v2), "approve")
    assert "branch '0' position 1 the journal holds 'step credit'" in nondeterminism(app, run_id)
    assert sorted(calls.lines()) == ["credit", "debit"]


async def test_a_branch_the_new_code_no_longer_opens_is_nondeterminism(make_app: Any, calls: Any) -> None:
    async def v1(ctx: cf.Context, _: Any) -> None:
        async def leg() -> None:
            await ctx.step("debit", calls.hit, "debit")
            await ctx.wait_for("approve")

        await ctx.gather(leg())

    async def v2(ctx: cf.Context, _: Any) -> None:
        await ctx.wait_for("approve")

    app, run_id = await redeployed(make_app, flow(v1), flow(v2), "approve")
    assert "branch '0' position 0 the journal holds 'step debit'" in nondeterminism(app, run_id)


async def test_a_patch_answer_the_new_code_no_longer_asks_for_is_no_change(make_app: Any, calls: Any) -> None:
    """Deprecation: once every run in flight answered True, the old path and the
    ``patched`` calls go; a run that recorded True carries on under the new code."""
    app, run_id = await redeployed(make_app, lambda app: register_v2(app, calls), lambda app: register_v3(app, calls),
                                   "approve")
    st = app.status(run_id)
    assert (st.status, st.output) == ("completed", 99), st.error
    assert sorted(calls.lines()) == ["pay net 5", "percent fee"]


def patch_answers(app: cf.Chainflow, run_id: str) -> list[tuple[str, Any]]:
    return [(e.key, e.output) for e in app.journal(run_id) if e.kind == "patch"]


async def test_patched_is_false_for_a_run_parked_in_a_gather_after_the_change(make_app: Any, calls: Any) -> None:
    """v2 adds a KYC check before the approvals, which v1 waits for in parallel: a v1
    run waiting for them went past that point (branches take no position in their
    parent, yet what they journaled comes after it), so it answers False."""
    async def v1(ctx: cf.Context, _: Any) -> None:
        await ctx.gather(ctx.wait_for("manager"), ctx.wait_for("finance"))
        await ctx.step("pay", calls.hit, "pay")

    async def v2(ctx: cf.Context, _: Any) -> None:
        if ctx.patched("kyc"):
            await ctx.step("kyc", calls.hit, "kyc")
        await ctx.gather(ctx.wait_for("manager"), ctx.wait_for("finance"))
        await ctx.step("pay", calls.hit, "pay")

    app, run_id = await redeployed(make_app, flow(v1), flow(v2), "manager", "finance")
    assert app.status(run_id).status == "completed", app.status(run_id).error
    assert patch_answers(app, run_id) == [("kyc#patch", False)]
    assert calls.lines() == ["pay"]


async def test_patched_is_false_in_a_branch_its_run_finished_before_the_change(make_app: Any, calls: Any) -> None:
    """v2 adds a check at the end of a branch that a v1 run finished before parking."""
    async def v1(ctx: cf.Context, _: Any) -> None:
        async def leg() -> None:
            await ctx.step("debit", calls.hit, "debit")

        await ctx.gather(leg())
        await ctx.wait_for("approve")

    async def v2(ctx: cf.Context, _: Any) -> None:
        async def leg() -> None:
            await ctx.step("debit", calls.hit, "debit")
            if ctx.patched("audit"):
                await ctx.step("audit", calls.hit, "audit")

        await ctx.gather(leg())
        await ctx.wait_for("approve")

    app, run_id = await redeployed(make_app, flow(v1), flow(v2), "approve")
    assert app.status(run_id).status == "completed", app.status(run_id).error
    assert patch_answers(app, run_id) == [("audit#patch", False)]
    assert calls.lines() == ["debit"]


async def test_patched_after_a_gather_is_true_for_a_run_that_reaches_it_first(make_app: Any, calls: Any) -> None:
    """What the gather's branches journaled in this run came before the change: a run
    on the new code from the start takes the new path, after a park as well."""
    app = make_app()

    @app.workflow("flow")
    async def v2(ctx: cf.Context, _: Any) -> None:
        await ctx.gather(ctx.wait_for("manager"), ctx.step("check", calls.hit, "check"))
        if ctx.patched("kyc"):
            await ctx.step("kyc", calls.hit, "kyc")
        await ctx.step("pay", calls.hit, "pay")

    run_id = app.start("flow").id
    async with running_worker(app):
        await parked(app, run_id, "manager")
        app.signal(run_id, "manager")
        st = await wait_status(app, run_id)
    assert st.status == "completed", st.error
    assert patch_answers(app, run_id) == [("kyc#patch", True)]
    assert calls.lines() == ["check", "kyc", "pay"]


def test_replay_answers_false_where_a_gather_went_past_the_change(make_app: Any, calls: Any) -> None:
    """A v1 run that ended in a gather, replayed against v2 whose ``patched`` sits before
    the gather, takes the old path, as it did live: no change."""
    app = make_app(clock=cf.FakeClock())

    @app.workflow("flow")
    async def v1(ctx: cf.Context, _: Any) -> None:
        await ctx.gather(ctx.step("debit", calls.hit, "debit"), ctx.step("credit", calls.hit, "credit"))

    run_id = app.start("flow").id
    asyncio.run(WorkflowTester(app).run_until_idle())
    assert app.status(run_id).status == "completed"

    new = make_app(clock=cf.FakeClock())

    @new.workflow("flow")
    async def v2(ctx: cf.Context, _: Any) -> None:
        if ctx.patched("kyc"):
            await ctx.step("kyc", calls.hit, "kyc")
        await ctx.gather(ctx.step("debit", calls.hit, "debit"), ctx.step("credit", calls.hit, "credit"))

    report = new.replay(run_id)
    assert not report.changed, report
