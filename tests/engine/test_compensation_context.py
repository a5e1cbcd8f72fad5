"""Compensations that take a context: ``async def undo(ctx, output)`` runs like a small
workflow in a branch of its own, its steps journaled once and replayed after a park,
a shutdown or another worker, and its own completion journaled once."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

import chainflow as cf
from chainflow.testing import WorkflowTester

from ._util import wait_until


class Declined(Exception):
    pass


def register(app: cf.Chainflow, calls: Any, *, hang: bool) -> None:
    """``reserve`` is undone by a compensation with three steps and a sleep between
    them; the first app's second step hangs, as a worker killed in mid-undo would."""

    async def stuck(what: str) -> str:
        calls.hit(f"start {what}")
        if hang:
            await asyncio.Event().wait()
        calls.hit(f"done {what}")
        return what

    async def release(ctx: cf.Context, seat: dict[str, str]) -> dict[str, Any]:
        first = await ctx.step("notify", calls.hit, f"notify {seat['id']}")
        await ctx.step("refund", stuck, f"refund {seat['id']}")
        token = str(ctx.uuid())  # recorded: the replay sees the same one
        await ctx.sleep("cool-off", 3600)  # parks the run in mid-compensation
        await ctx.step("unlock", calls.hit, f"unlock {seat['id']} {token}")
        return {"notified": first, "token": token}

    def plain_undo(output: str) -> None:  # the one-argument form keeps working as before
        calls.hit(f"undo {output}")

    def decline() -> None:
        raise Declined("card declined")

    @app.workflow("book")
    async def book(ctx: cf.Context, _: Any) -> None:
        await ctx.step("hold", lambda: "hold-1", compensate=plain_undo)
        await ctx.step("reserve", lambda: {"id": "seat-7"}, compensate=release)
        await ctx.step("charge", decline, retry=cf.Retry(max_attempts=1))


async def test_compensation_with_steps_runs_each_once_across_a_restart(make_app: Any, calls: Any) -> None:
    first = make_app(clock=cf.FakeClock())
    register(first, calls, hang=True)
    run_id = first.start("book").id
    worker = first.worker(poll_interval=0.02)
    await worker.start()
    await worker.poll()
    await wait_until(lambda: calls.count("start refund seat-7") == 1, what="the compensation's second step")
    await asyncio.wait_for(worker.close(), 5)  # interrupts the compensation, hands the run back
    assert worker.outcomes[run_id].status == "abandoned"

    second = make_app(clock=first.clock)  # another process, same database
    register(second, calls, hang=False)
    await WorkflowTester(second).run_until_idle()  # through the hour's sleep inside the compensation
    st = second.status(run_id)
    assert st.status == "failed", st.error
    assert "compensation_failures" not in st.error
    assert st.compensations == {"reserve": "ok", "hold": "ok"}
    lines = calls.lines()
    token = next(line for line in lines if line.startswith("unlock")).split()[-1]
    assert lines == ["notify seat-7", "start refund seat-7", "start refund seat-7", "done refund seat-7",
                     f"unlock seat-7 {token}", "undo hold-1"]
    journal = [(e.branch, e.key, e.kind, e.status, e.attempts) for e in second.journal(run_id)]
    inside = [row for row in journal if row[0] == "compensate:reserve"]
    assert inside == [("compensate:reserve", k, kind, "ok", 1) for k, kind in
                      (("notify", "step"), ("refund", "step"), ("uuid", "uuid"), ("cool-off", "sleep"),
                       ("unlock", "step"))]
    comps = [row for row in journal if row[2] == "compensation"]
    assert comps == [("", "compensate:reserve", "compensation", "ok", 1),
                     ("", "compensate:hold", "compensation", "ok", 1)]
    out = next(e.output for e in second.journal(run_id) if e.key == "compensate:reserve")
    assert out == {"notified": None, "token": token}


async def test_failing_step_inside_a_compensation_fails_it_once_and_others_run(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    def broken() -> None:
        calls.hit("broken")
        raise RuntimeError("refund API gone")

    async def undo(ctx: cf.Context, out: str) -> None:
        await ctx.step("refund", broken, retry=cf.Retry(max_attempts=2, initial=10, jitter=0))

    @app.workflow("w")
    async def w(ctx: cf.Context, _: Any) -> None:
        await ctx.step("a", lambda: "a", compensate=lambda out: calls.hit(f"undo {out}"))
        await ctx.step("b", lambda: "b", compensate=undo)
        await ctx.step("c", lambda: (_ for _ in ()).throw(Declined("no")), retry=cf.Retry(max_attempts=1))

    result = await WorkflowTester(app).run("w")
    assert result.status == "failed"
    assert result.error is not None
    assert result.error["compensation_failures"] == ["compensate:b"]
    assert result.run.compensations == {"b": "error", "a": "ok"}
    assert calls.lines() == ["broken", "broken", "undo a"]  # the step's own policy, not the body re-run
    refund = result.steps["compensate:b/refund"]
    assert refund.status == "error" and refund.attempts == 2


async def test_a_compensation_that_takes_a_context_announces_its_end_as_the_plain_form_does(
        make_app: Any) -> None:
    """docs/operations.md: compensations are steps (``compensate:KEY``) to the hooks,
    metrics and spans, whichever form they take, ending ok or failed."""
    app = make_app(clock=cf.FakeClock())
    heard: list[tuple[str, str | None]] = []
    for kind in ("step_completed", "step_failed"):
        app.on(kind)(lambda e: heard.append((e.kind, e.step)))

    async def undo(ctx: cf.Context, out: str) -> None:
        await ctx.step("refund", lambda: out)

    async def broken_undo(ctx: cf.Context, out: str) -> None:
        raise RuntimeError("refund API gone")

    @app.workflow("w")
    async def w(ctx: cf.Context, _: Any) -> None:
        await ctx.step("a", lambda: "a", compensate=lambda out: None)
        await ctx.step("b", lambda: "b", compensate=undo)
        await ctx.step("c", lambda: "c", compensate=broken_undo)
        await ctx.step("d", lambda: (_ for _ in ()).throw(Declined("no")), retry=cf.Retry(max_attempts=1))

    result = await WorkflowTester(app).run("w")
    assert result.status == "failed" and result.run.compensations == {"c": "error", "b": "ok", "a": "ok"}
    assert heard[4:] == [("step_failed", "compensate:c"), ("step_completed", "compensate:b/refund"),
                         ("step_completed", "compensate:b"), ("step_completed", "compensate:a")], heard


async def test_bad_compensations_are_refused_before_the_step_runs(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    def sync_two(ctx: Any, out: Any) -> None:
        pass

    async def nested(ctx: cf.Context, out: Any) -> None:
        await ctx.step("inner", calls.hit, "inner", compensate=lambda _: None)

    @app.workflow("sync-two")
    async def w1(ctx: cf.Context, _: Any) -> None:
        await ctx.step("a", calls.hit, "a", compensate=cast(Any, sync_two))  # refused: not an async def

    @app.workflow("nested")
    async def w2(ctx: cf.Context, _: Any) -> None:
        await ctx.step("a", lambda: "a", compensate=nested)
        raise Declined("fail")

    @app.workflow("not-callable")
    async def w3(ctx: cf.Context, _: Any) -> None:
        await ctx.step("a", calls.hit, "a", compensate="undo")  # type: ignore[call-overload]

    tester = WorkflowTester(app)
    r1 = await tester.run("sync-two")
    assert r1.status == "failed" and r1.error is not None and r1.error["type"] == "builtins.TypeError"
    assert "compensate of step 'a' takes (ctx, output) but is not an async def" in r1.error["message"]
    r3 = await tester.run("not-callable")
    assert r3.error is not None
    assert "compensate of step 'a' must be callable, got 'undo'" in r3.error["message"]
    assert calls.lines() == []  # refused before the step ran
    r2 = await tester.run("nested")
    assert r2.status == "failed" and r2.run.compensations == {"a": "error"}
    assert r2.steps["compensate:a"].error is not None
    assert "cannot take compensate=" in r2.steps["compensate:a"].error["message"]
    assert calls.lines() == []


@pytest.mark.parametrize("name", ["compensate:x", "compensate:"])
def test_compensation_prefix_is_reserved_in_branch_names(name: str) -> None:
    from chainflow.storage import limits

    with pytest.raises(ValueError, match="reserves"):
        limits.slot_name(name, "branch")
    assert limits.in_compensation(limits.compensation_branch("a/b", "pay#2"))
    assert not limits.in_compensation("a/b")


def test_rollback_supersedes_a_compensations_branch_with_the_entry_it_undoes(make_app: Any) -> None:
    """A reorg rollback invalidates ``credit`` and whatever its compensation journaled
    in ``compensate:credit`` (so a later undo runs its steps afresh), while the branch
    of a kept entry's compensation and sibling rows stay; compensations and their
    branches' rows are never dependents in their own right (they go with the entry
    they undo)."""
    import sqlalchemy as sa

    from chainflow.chain import reorg
    from chainflow.storage import schema, store

    app = make_app()
    app.ensure_schema()
    rows = [("", "mint", "submit"), ("", "credit", "step"), ("compensate:credit", "refund", "step"),
            ("compensate:credit/inner", "x", "step"), ("", "compensate:credit", "compensation"),
            ("compensate:creditor", "y", "step"), ("", "other", "step")]
    with app.engine.begin() as conn:
        for pos, (branch, key, kind) in enumerate(rows):
            conn.execute(schema.journal.insert().values(run_id="r", branch=branch, position=pos, key=key,
                                                        kind=kind, status="ok", attempts=1))
        for branch, key in (("compensate:credit", "refund"), ("compensate:creditor", "y")):
            conn.execute(schema.attempts.insert().values(run_id="r", branch=branch, key=key, attempt=1,
                                                         error="{}", started_at=0, finished_at=0, next_at=0))
        entries = [store.Entry(r.id, r.branch, r.position, r.key, r.kind, r.status, None, None, 1)
                   for r in conn.execute(sa.select(schema.journal).order_by(schema.journal.c.id))]
    target = entries[1]  # credit
    doomed = reorg.dependents(entries, [target])
    assert [(e.branch, e.key) for e in doomed] == [("", "credit"), ("", "other")]
    with app.engine.begin() as conn:
        store.supersede(conn, "r", doomed, "reorg #1", 1.0)
        live = [(r.branch, r.key) for r in conn.execute(
            sa.select(schema.journal).where(schema.journal.c.superseded == 0).order_by(schema.journal.c.id))]
        tries = [r.branch for r in conn.execute(sa.select(schema.attempts).where(schema.attempts.c.superseded == 0))]
    assert live == [("", "mint"), ("compensate:creditor", "y")]
    assert tries == ["compensate:creditor"]
