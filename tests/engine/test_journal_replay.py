"""Journal and replay: completed work is never redone, and replay is deterministic."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import chainflow as cf
from chainflow.runtime.committer import Committer
from chainflow.storage import codec, store
from chainflow.testing import WorkflowTester

from ._util import error_type, live_keys, running_worker, wait_status, wait_until

HOUR = 3600.0


def register_order(app: cf.Chainflow, calls: Any, *, block_ship: bool) -> None:
    def reserve(n: int) -> dict[str, Any]:
        calls.hit("reserve")
        return {"sku": n, "hold": uuid.uuid4().hex}

    async def charge(n: int) -> str:
        calls.hit("charge")
        return uuid.uuid4().hex

    async def ship(n: int) -> str:
        calls.hit("ship-start")
        if block_ship:  # this "process" dies here: it never gets past the step
            await asyncio.Event().wait()
        calls.hit("ship")
        return f"parcel-{n}"

    @app.workflow("order")
    async def order(ctx: cf.Context, n: int) -> list[Any]:
        hold = await ctx.step("reserve", reserve, n)
        receipt: str = await ctx.step("charge", charge, n)
        parcel: str = await ctx.step("ship", ship, n)
        return [hold, receipt, parcel]


async def test_completed_steps_not_rerun_after_worker_restart(make_app: Any, calls: Any) -> None:
    first = make_app()
    register_order(first, calls, block_ship=True)
    run_id = first.start("order", 7).id
    worker = first.worker(poll_interval=0.02)
    await worker.start()
    drain = asyncio.create_task(worker.drain())
    await wait_until(lambda: calls.count("ship-start") == 1, what="the ship step to start")
    drain.cancel()
    await worker.close()  # the process goes away mid-step; the run is handed back
    before = {e.key: e.output for e in first.journal(run_id)}
    assert set(before) == {"reserve", "charge"}

    # a new process: new app object, new registry, same database
    second = make_app()
    register_order(second, calls, block_ship=False)
    worker2 = second.worker(poll_interval=0.02)
    await worker2.start()
    try:
        await asyncio.wait_for(worker2.drain(), 10)
    finally:
        await worker2.close()

    st = second.status(run_id)
    assert st.status == "completed", st.error
    assert calls.count("reserve") == 1
    assert calls.count("charge") == 1
    assert calls.count("ship") == 1
    # the workflow saw the journaled values, not fresh ones
    assert st.output == [before["reserve"], before["charge"], "parcel-7"]
    assert [e.key for e in second.journal(run_id)] == ["reserve", "charge", "ship"]
    assert all(e.attempts == 1 for e in second.journal(run_id))


async def test_loop_steps_keyed_by_occurrence_and_replayed(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    def charge(i: int) -> str:
        calls.hit(f"charge {i}")
        return f"{i}-{uuid.uuid4().hex[:6]}"

    @app.workflow("installments")
    async def installments(ctx: cf.Context, n: int) -> list[str]:
        out = []
        for i in range(n):
            out.append(await ctx.step("charge", charge, i))
            await ctx.sleep("gap", 30 * 86400)  # every wake-up replays the loop so far
        return out

    tester = WorkflowTester(app)
    result = await tester.run("installments", 3)
    assert result.status == "completed", result.error
    assert calls.counts() == {"charge 0": 1, "charge 1": 1, "charge 2": 1}
    assert [k for _, k, _ in live_keys(app, result.run.id)] == [
        "charge", "gap", "charge#1", "gap#1", "charge#2", "gap#2",
    ]
    assert result.output == [result.steps[k].output for k in ("charge", "charge#1", "charge#2")]
    assert [e.position for e in app.journal(result.run.id)] == list(range(6))


def register_fanout(app: cf.Chainflow, calls: Any) -> None:
    def mint(label: str) -> str:
        calls.hit(label)
        return f"{label}:{uuid.uuid4().hex[:8]}"

    async def leg(ctx: cf.Context, side: str) -> list[Any]:
        paid = await ctx.step("pay", mint, f"pay-{side}")
        await ctx.sleep("settle", 60)
        audit = await ctx.branch("audit", ctx.step("check", mint, f"check-{side}"))
        return [paid, audit]

    @app.workflow("fanout")
    async def fanout(ctx: cf.Context, _: Any) -> dict[str, Any]:
        plain = await asyncio.gather(ctx.step("fetch", mint, "fetch-x"), ctx.step("fetch", mint, "fetch-y"))
        quotes = await ctx.gather(ctx.step("quote", mint, "quote-a"), ctx.step("quote", mint, "quote-b"))
        legs = await asyncio.gather(ctx.branch("left", leg(ctx, "L")), ctx.branch("right", leg(ctx, "R")))
        await ctx.sleep("cool-off", HOUR)
        return {"plain": plain, "quotes": quotes, "legs": legs}


async def test_gather_and_branches_replay_deterministically(make_app: Any, calls: Any) -> None:
    clock = cf.FakeClock()
    first = make_app(clock=clock)
    register_fanout(first, calls)
    run_id = first.start("fanout").id
    await WorkflowTester(first).run_until_idle(advance=False)  # stops at the legs' sleeps
    assert first.status(run_id).status == "sleeping"

    second = make_app(clock=clock)  # a restarted process resumes it
    register_fanout(second, calls)
    await WorkflowTester(second).run_until_idle()
    tr = WorkflowTester(second).result(run_id)
    assert tr.status == "completed", tr.error

    assert all(n == 1 for n in calls.counts().values()), calls.counts()
    assert len(calls.counts()) == 8
    rows = {(e.branch, e.key): e for e in second.journal(run_id)}
    assert set(rows) == {
        ("", "fetch"), ("", "fetch#1"), ("0", "quote"), ("1", "quote"),
        ("left", "pay"), ("left", "settle"), ("left/audit", "check"),
        ("right", "pay"), ("right", "settle"), ("right/audit", "check"),
        ("", "cool-off"),
    }
    # positions are per branch and follow call order, whatever the completion order
    assert rows[("", "fetch")].position == 0 and rows[("", "fetch#1")].position == 1
    assert rows[("", "cool-off")].position == 2
    assert rows[("left", "pay")].position == 0 and rows[("left", "settle")].position == 1
    out = tr.output
    assert out["plain"] == [rows[("", "fetch")].output, rows[("", "fetch#1")].output]
    assert out["plain"][0].startswith("fetch-x") and out["plain"][1].startswith("fetch-y")
    assert out["quotes"] == [rows[("0", "quote")].output, rows[("1", "quote")].output]
    assert out["legs"] == [
        [rows[("left", "pay")].output, rows[("left/audit", "check")].output],
        [rows[("right", "pay")].output, rows[("right/audit", "check")].output],
    ]
    assert out["legs"][0][0].startswith("pay-L") and out["legs"][1][1].startswith("check-R")


async def test_now_uuid_random_recorded_and_replayed(make_app: Any, calls: Any) -> None:
    clock = cf.FakeClock()
    app = make_app(clock=clock)

    def emit(values: dict[str, Any]) -> None:
        calls.hit(codec.dumps(values))

    @app.workflow("recorder")
    async def recorder(ctx: cf.Context, _: Any) -> dict[str, Any]:
        values = {"now": ctx.now(), "uuid": ctx.uuid(), "random": ctx.random()}
        await ctx.step("emit", emit, values)  # what the first execution saw, sent outside
        await ctx.sleep("nap", HOUR)  # forces an unwind: the rest runs on a replay
        return {"values": values, "later": ctx.now()}

    result = await WorkflowTester(app).run("recorder")
    assert result.status == "completed", result.error
    (line,) = calls.lines()
    seen_first = codec.loads(line)
    out = result.output
    assert out["values"] == seen_first  # same instant, same uuid, same random after replay
    assert isinstance(out["values"]["uuid"], uuid.UUID)
    assert 0.0 <= out["values"]["random"] < 1.0
    assert (out["later"] - out["values"]["now"]).total_seconds() == HOUR
    kinds = [(k, kind) for _, k, kind in live_keys(app, result.run.id)]
    assert kinds == [("now", "now"), ("uuid", "uuid"), ("random", "random"), ("emit", "step"),
                     ("nap", "sleep"), ("now#1", "now")]
    assert result.steps["uuid"].output == str(out["values"]["uuid"])


@pytest.mark.parametrize("kind", ["uuid", "now", "random"])
async def test_a_recorded_value_is_durable_before_the_step_it_feeds_starts(make_app: Any, kind: str) -> None:
    """``key = ctx.uuid(); ctx.step("pay", pay, key)``: a crash or a hand-back during
    ``pay`` must not lose the key, or the next execution pays again under a new one."""
    app = make_app()
    journaled: list[list[str]] = []

    def pay(run_id: str, key: str) -> str:
        journaled.append([e.kind for e in app.journal(run_id)])
        return key

    @app.workflow("keyed")
    async def keyed(ctx: cf.Context, _: Any) -> str:
        key = str(getattr(ctx, kind)())
        return await ctx.step("pay", pay, ctx.run_id, key)

    run_id = app.start("keyed").id
    async with running_worker(app):
        st = await wait_status(app, run_id)
    assert st.status == "completed", st.error
    assert journaled == [[kind]]


async def test_a_recorded_value_another_branch_commits_is_durable_before_the_step_it_feeds(
        make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sibling branch's commit that takes the recorded value along is still in flight:
    the step that uses the value waits for it to land."""
    app = make_app()
    write = Committer.write
    carrying = asyncio.Event()

    async def slow_write(self: Committer, run_id: str, fence: int | None, ops: list[Any],
                         *, exclusive: bool = False) -> list[Any]:
        if any(isinstance(op, store.EntryInsert) and op.row["kind"] == "sleep" for op in ops):
            carrying.set()
            await asyncio.sleep(0.3)  # a group commit that takes its time
        return await write(self, run_id, fence, ops, exclusive=exclusive)

    monkeypatch.setattr(Committer, "write", slow_write)
    journaled: list[list[str]] = []

    def pay(run_id: str, key: str) -> str:
        journaled.append([e.kind for e in app.journal(run_id)])
        return key

    @app.workflow("keyed")
    async def keyed(ctx: cf.Context, _: Any) -> list[Any]:
        async def paying() -> str:
            key = str(ctx.uuid())
            await carrying.wait()  # the sibling's commit has taken the uuid's row with it
            return await ctx.step("pay", pay, ctx.run_id, key)

        async def napping() -> None:
            await ctx.sleep("nap", 0)

        return await ctx.gather(paying(), napping())

    run_id = app.start("keyed").id
    async with running_worker(app):
        st = await wait_status(app, run_id)
    assert st.status == "completed", st.error
    assert journaled == [["uuid", "sleep"]]


async def test_reordered_steps_fail_with_nondeterminism(make_app: Any, calls: Any) -> None:
    clock = cf.FakeClock()
    old = make_app(clock=clock)

    def work(name: str) -> str:
        calls.hit(name)
        return name

    @old.workflow("pipeline")
    async def pipeline_v1(ctx: cf.Context, _: Any) -> None:
        await ctx.step("validate", work, "validate")
        await ctx.step("debit", work, "debit")
        await ctx.sleep("hold", HOUR)
        await ctx.step("notify", work, "notify")

    run_id = old.start("pipeline").id
    await WorkflowTester(old).run_until_idle(advance=False)
    assert old.status(run_id).status == "sleeping"
    journal_before = old.journal(run_id)

    new = make_app(clock=clock)  # deployed code swaps two steps that already ran

    @new.workflow("pipeline")
    async def pipeline_v2(ctx: cf.Context, _: Any) -> None:
        await ctx.step("debit", work, "debit")
        await ctx.step("validate", work, "validate")
        await ctx.sleep("hold", HOUR)
        await ctx.step("notify", work, "notify")

    await WorkflowTester(new).run_until_idle()
    st = new.status(run_id)
    assert st.status == "failed"
    assert error_type(st.error) == "chainflow.errors.NonDeterminismError"
    message = st.error["message"]
    assert "position 0" in message
    assert "'step validate'" in message  # what the journal holds
    assert "'step debit'" in message  # what the code now asks for
    assert calls.counts() == {"validate": 1, "debit": 1}  # nothing ran again, nothing new ran
    assert new.journal(run_id) == journal_before
    assert st.compensations == {}
