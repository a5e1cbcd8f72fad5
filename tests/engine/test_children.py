"""Child runs (``ctx.child``): started once, awaited like a step, cancelled with their
parent, cancelled by a reorg rollback of the parent's slot; checked in the tables."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import sqlalchemy as sa

import chainflow as cf
from chainflow.storage import schema, store
from chainflow.testing import WorkflowTester

from ._util import live_keys, running_worker, wait_status


def register(app: cf.Chainflow, calls: Any) -> None:
    @app.workflow("double")
    async def double(ctx: cf.Context, n: int) -> int:
        return await ctx.step("times-two", lambda: n * 2)

    @app.workflow("broken")
    async def broken(ctx: cf.Context, _: Any) -> None:
        def boom() -> None:
            raise ValueError("no funds")

        await ctx.step("boom", boom, retry=cf.Retry(max_attempts=1))

    @app.workflow("held")
    async def held(ctx: cf.Context, who: str) -> Any:
        await ctx.step("reserve", calls.hit, f"reserve {who}", compensate=lambda _: calls.hit(f"release {who}"))
        return await ctx.wait_for("go")

    @app.workflow("parent")
    async def parent(ctx: cf.Context, n: int) -> dict[str, Any]:
        doubled = await ctx.child("kid", "double", n)
        go = await ctx.wait_for("go")
        try:
            await ctx.child("bad", "broken")
        except cf.StepError as exc:
            failed = exc.message
        return {"doubled": doubled, "go": go, "failed": failed}

    @app.workflow("holder")
    async def holder(ctx: cf.Context, _: Any) -> Any:
        await ctx.step("pay", calls.hit, "pay")
        return await ctx.child("hold", "held", "h")


async def parked_on(app: cf.Chainflow, run_id: str, signal: str) -> None:
    deadline = time.monotonic() + 10
    while signal not in (await app.astatus(run_id)).waiting_on:
        assert time.monotonic() < deadline, f"run {run_id} never parked on {signal!r}"
        await asyncio.sleep(0.01)


async def started(app: cf.Chainflow, workflow: str, count: int = 1) -> list[Any]:
    deadline = time.monotonic() + 10
    while len(found := runs_of(app, workflow)) < count:
        assert time.monotonic() < deadline, f"{workflow}: {len(found)} runs, not {count}"
        await asyncio.sleep(0.01)
    return found


def runs_of(app: cf.Chainflow, workflow: str) -> list[Any]:
    with app.engine.connect() as conn:
        return list(conn.execute(sa.select(schema.runs).where(schema.runs.c.workflow == workflow)
                                 .order_by(schema.runs.c.created_at)))


async def test_child_output_is_the_steps_output_and_it_starts_once(make_app: Any, calls: Any) -> None:
    app = make_app()
    register(app, calls)
    run_id = app.start("parent", 21).id
    async with running_worker(app):
        await parked_on(app, run_id, "go")
        (kid,) = runs_of(app, "double")
        # parked on the signal: the parent holds no worker; the child is recorded in the slot
        assert (kid.parent_id, kid.parent_slot, kid.idempotency_key) == (run_id, "kid", f"child:{run_id}:kid")
        assert kid.status == "completed"
        app.signal(run_id, "go", "yes")
        st = await wait_status(app, run_id)
    assert st.status == "completed", st.error
    assert st.output["doubled"] == 42 and st.output["go"] == "yes"
    assert "ValueError: no funds" in st.output["failed"]
    # the parent executed twice (parked on "go"), the child slot was replayed, not re-run
    assert len(runs_of(app, "double")) == 1 and len(runs_of(app, "broken")) == 1
    assert [k for k in live_keys(app, run_id) if k[2] == "child"] == [("", "kid", "child"), ("", "bad", "child")]
    kids = app.children(run_id)
    assert sorted((k.workflow, k.status, k.parent, k.parent_step) for k in kids) == [
        ("broken", "failed", run_id, "bad"), ("double", "completed", run_id, "kid")]
    assert app.status(run_id).parent is None and app.status(kids[0].id).forked_from is None


async def test_cancelling_the_parent_cancels_the_child_and_its_compensations_run(make_app: Any, calls: Any) -> None:
    app = make_app()
    register(app, calls)
    run_id = app.start("holder").id
    async with running_worker(app):
        (kid,) = await started(app, "held")
        await parked_on(app, kid.id, "go")
        app.cancel(run_id)
        assert app.status(kid.id).cancel_requested  # at once, not after the parent's compensations
        child = await wait_status(app, kid.id)
        parent = await wait_status(app, run_id)
    assert (parent.status, child.status) == ("cancelled", "cancelled")
    assert child.compensations == {"reserve": "ok"}
    assert calls.lines() == ["pay", "reserve h", "release h"]


async def test_a_failed_parent_cancels_children_it_never_awaited(make_app: Any, calls: Any) -> None:
    app = make_app()
    register(app, calls)

    @app.workflow("abandons")
    async def abandons(ctx: cf.Context, _: Any) -> None:
        ctx.branch("side", ctx.child("hold", "held", "x"))
        await ctx.wait_for("go")
        raise RuntimeError("parent gives up")

    run_id = app.start("abandons").id
    async with running_worker(app):
        (kid,) = await started(app, "held")
        await parked_on(app, kid.id, "go")
        app.signal(run_id, "go")
        assert (await wait_status(app, run_id)).status == "failed"
        assert (await wait_status(app, kid.id)).status == "cancelled"
    assert calls.lines() == ["reserve x", "release x"]


async def test_reorg_rollback_of_the_parent_cancels_the_child_and_starts_a_new_one(make_app: Any,
                                                                                  calls: Any) -> None:
    """A rollback request on the step before the child (what the tracker writes when a
    reorg breaks a finality assumption, ``store.request_rollback``): the child started
    after it is cancelled with its compensations, the slot runs again and its next child
    takes the key ``…@2``."""
    app = make_app()
    register(app, calls)
    run_id = app.start("holder").id
    async with running_worker(app):
        (first,) = await started(app, "held")
        await parked_on(app, first.id, "go")
        assert app.database.tx(store.request_rollback, run_id, "\x1fpay", "reorg at 7", time.time())
        assert (await wait_status(app, first.id)).status == "cancelled"
        first, second = await started(app, "held", 2)
        assert second.idempotency_key == f"child:{run_id}:hold@2"
        await parked_on(app, second.id, "go")
        app.signal(second.id, "go", "paid")
        st = await wait_status(app, run_id)
    assert st.status == "completed" and st.output == "paid"
    assert app.status(first.id).compensations == {"reserve": "ok"}
    # the cancelled child compensates while the parent runs its step again: any interleaving
    assert sorted(calls.lines()) == ["pay", "pay", "release h", "reserve h", "reserve h"]
    invalidated = [(e.key, e.kind) for e in app.journal(run_id) if e.invalidated]
    assert invalidated == [("pay", "step"), ("hold", "child")]
    assert [k.status for k in app.children(run_id)] == ["cancelled", "completed"]


async def test_child_of_an_unknown_workflow_fails_the_parent_before_anything_starts(make_app: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    @app.workflow("lost")
    async def lost(ctx: cf.Context, _: Any) -> Any:
        return await ctx.child("kid", "nowhere")

    run_id = app.start("lost").id
    await WorkflowTester(app).run_until_idle()
    st = app.status(run_id)
    assert st.status == "failed" and "nowhere" in st.error["message"]
    with app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.runs)).scalar() == 1


async def _drain(app: cf.Chainflow) -> None:
    """Run what is due on a worker of ``app`` until nothing is, parking every wait."""
    worker = app.worker(concurrency=8, inline_wait=0.0, poll_interval=0.01)
    await worker.start()
    try:
        await worker.drain()
    finally:
        await worker.close()


async def _unobserved_child(make_app: Any, calls: Any, before: bool) -> tuple[cf.Chainflow, str]:
    """A parent (a ``quote`` step first, if ``before``) whose child paid and completed
    on a worker serving only the child, the parent not run since: its slot is still
    pending."""
    app, child_only = make_app(), make_app()
    for a in (app, child_only):
        @a.workflow("payout")
        async def payout(ctx: cf.Context, who: str) -> str:
            await ctx.wait_for("go")
            await ctx.step("send", calls.hit, f"send {who}")
            return "sent"

    @app.workflow("parent")
    async def parent(ctx: cf.Context, _: Any) -> Any:
        if before:
            await ctx.step("quote", calls.hit, "quote")
        return await ctx.child("pay", "payout", "alice", compensate=lambda out: calls.hit("refund alice"))

    run_id = app.start("parent").id
    await _drain(app)  # the parent parks on its child, the child on "go"
    (kid,) = app.children(run_id)
    app.signal(kid.id, "go")
    await _drain(child_only)
    assert app.status(kid.id).status == "completed"
    return app, run_id


async def test_a_cancel_compensates_a_child_that_completed_unobserved(make_app: Any, calls: Any) -> None:
    """The parent is cancelled after its child completed but before the parent looked:
    the child's outcome is journaled as the cancel replays it, so its compensation
    (the refund) runs with the rest."""
    app, run_id = await _unobserved_child(make_app, calls, before=False)
    app.cancel(run_id)
    await _drain(app)
    assert app.status(run_id).status == "cancelled"
    assert calls.lines() == ["send alice", "refund alice"]
    assert len(app.children(run_id)) == 1 and app.forks(run_id) == [], "a child is not a fork"


async def test_a_rollback_compensates_a_child_that_completed_unobserved(make_app: Any, calls: Any) -> None:
    """A reorg breaks the step before the child while the child has completed unseen:
    its outcome is journaled as the rollback replays, its compensation runs, and the
    redone slot's new child pays again: paid, refunded, paid (not paid twice)."""
    app, run_id = await _unobserved_child(make_app, calls, before=True)
    assert app.database.tx(store.request_rollback, run_id, "\x1fquote", "reorg", time.time())
    await _drain(app)
    for kid in app.children(run_id)[1:]:
        app.signal(kid.id, "go")
    await _drain(app)
    assert app.status(run_id).status == "completed"
    assert [line for line in calls.lines() if line != "quote"] == ["send alice", "refund alice", "send alice"]


async def test_a_dead_lettered_child_retried_after_its_parent_was_cancelled_is_cancelled(
        make_app: Any, calls: Any) -> None:
    """The parent is cancelled while its child is dead-lettered (the cancel passes it
    by: an operator may still retry it).  Retried later, the child does not complete
    for a parent that is gone: it resumes cancelled, and its compensations run."""
    app = make_app()
    register(app, calls)
    run_id = app.start("holder").id
    async with running_worker(app):
        (kid,) = await started(app, "held")
        await parked_on(app, kid.id, "go")
        fence = app.database.read(store.get_run, kid.id).fence  # the engine gives up on the child
        assert app.database.tx(store.dead_letter, kid.id, fence, 99, '{"type": "X", "message": "gave up"}',
                               time.time())
        app.cancel(run_id)
        assert (await wait_status(app, run_id)).status == "cancelled"
        app.retry(kid.id)
        child = await wait_status(app, kid.id)
    assert child.status == "cancelled", (child.status, calls.lines())
    assert calls.lines() == ["pay", "reserve h", "release h"]
