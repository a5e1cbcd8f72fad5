"""Versioning in-flight runs: ``ctx.patched`` keeps runs recorded before a change on the
old path after new code is deployed, and new runs on the new one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import chainflow as cf
from chainflow.testing import WorkflowTester

from ._util import live_keys, running_worker, wait_status


def register_v1(app: cf.Chainflow, calls: Any) -> None:
    @app.workflow("payout")
    async def payout(ctx: cf.Context, amount: int) -> int:
        await ctx.step("fee", calls.hit, "flat fee")
        await ctx.wait_for("approve")
        await ctx.step("pay", calls.hit, f"pay {amount}")
        return 100


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


async def parked(app: cf.Chainflow, run_id: str) -> None:
    deadline = time.monotonic() + 10
    while "approve" not in (await app.astatus(run_id)).waiting_on:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


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
    old = make_app()
    register_v1(old, calls)
    run_id = old.start("payout", 5).id
    async with running_worker(old):
        await parked(old, run_id)
    new = make_app()
    register_v2_unpatched(new, calls)
    async with running_worker(new):
        new.signal(run_id, "approve")
        st = await wait_status(new, run_id)
    assert st.status == "failed" and st.error is not None and st.error["type"].endswith("NonDeterminismError")
    assert "ctx.patched(" in st.error["message"] and "'step fee'" in st.error["message"]


def test_replay_answers_patched_as_recorded(make_app: Any, calls: Any) -> None:
    """A replay of the finished old run against the patched code reports no change."""
    app = make_app(clock=cf.FakeClock())
    register_v2(app, calls)

    tester = WorkflowTester(app)
    run_id = app.start("payout", 3).id
    asyncio.run(tester.run_until_idle())
    app.signal(run_id, "approve")
    asyncio.run(tester.run_until_idle())
    assert app.status(run_id).output == 99
    report = app.replay(run_id)
    assert not report.changed, report
