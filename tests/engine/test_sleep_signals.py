"""Durable sleeps and external signals, on the engine's (fake) clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.runtime.committer import Committer
from chainflow.testing import WorkflowTester, run_workflow

from ._util import claim_count, error_type, running_worker, wait_status

DAY = 86400.0


def register_trial(app: cf.Chainflow, calls: Any) -> None:
    @app.workflow("trial")
    async def trial(ctx: cf.Context, user: str) -> dict[str, Any]:
        began = ctx.now()
        await ctx.step("welcome", calls.hit, f"welcome {user}")
        await ctx.sleep("trial-period", dt.timedelta(days=30))
        await ctx.step("bill", calls.hit, f"bill {user}")
        return {"began": began, "billed": ctx.now()}


async def test_thirty_day_sleep_completes_by_advancing_fake_clock(make_app: Any, calls: Any) -> None:
    clock = cf.FakeClock()
    app = make_app(clock=clock)
    register_trial(app, calls)
    tester = WorkflowTester(app)
    run_id = app.start("trial", "ann").id
    start = clock.time()

    await tester.run_until_idle(advance=False)
    st = app.status(run_id)
    assert st.status == "sleeping"
    assert st.wake_at == start + 30 * DAY
    assert calls.lines() == ["welcome ann"]

    clock.advance(dt.timedelta(days=29, hours=23))
    await tester.run_until_idle(advance=False)
    assert app.status(run_id).status == "sleeping"
    assert calls.lines() == ["welcome ann"]

    await tester.run_until_idle()  # jumps straight to the wake-up (a real wait would hang the test)
    st = app.status(run_id)
    assert st.status == "completed", st.error
    assert calls.lines() == ["welcome ann", "bill ann"]
    assert st.output["billed"] - st.output["began"] == dt.timedelta(days=30)


def test_run_workflow_helper_sleeps_thirty_days(db_url: str, calls: Any) -> None:
    result = run_workflow(lambda app: register_trial(app, calls), "trial", "bob", database_url=db_url)
    assert result.status == "completed", result.error
    assert result.output["billed"] - result.output["began"] == dt.timedelta(days=30)
    assert result.steps["trial-period"].kind == "sleep"
    assert calls.lines() == ["welcome bob", "bill bob"]


def register_approval(app: cf.Chainflow, calls: Any, timeout: float | None = 7 * DAY) -> None:
    @app.workflow("approval")
    async def approval(ctx: cf.Context, _: Any) -> Any:
        await ctx.step("request", calls.hit, "request")
        await ctx.sleep("cooldown", 3600)
        try:
            decision = await ctx.wait_for("decision", timeout=timeout)
        except cf.WaitTimeout as exc:
            calls.hit("timed out")
            return {"expired": exc.signal, "at": ctx.now()}
        await ctx.step("act", calls.hit, "act")
        return decision


PAYLOAD = {"by": "alice", "amount": Decimal("12.50"), "big": 2**80}


async def test_signal_sent_before_the_wait_is_kept(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    register_approval(app, calls)
    run_id = app.start("approval").id
    app.signal(run_id, "decision", PAYLOAD)  # before any worker ran, long before the wait
    app.signal(run_id, "other", "ignored")
    await WorkflowTester(app).run_until_idle()
    st = app.status(run_id)
    assert st.status == "completed", st.error
    assert st.output == PAYLOAD
    assert calls.lines() == ["request", "act"]
    (wait,) = [e for e in app.journal(run_id) if e.kind == "wait"]
    assert wait.key == "decision" and wait.status == "ok" and wait.output == PAYLOAD


async def test_signal_sent_while_sleeping_is_kept(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    register_approval(app, calls)
    tester = WorkflowTester(app)
    run_id = app.start("approval").id
    await tester.run_until_idle(advance=False)
    assert app.status(run_id).status == "sleeping"
    app.signal(run_id, "decision", "yes")
    await tester.run_until_idle()
    assert app.status(run_id).output == "yes"


async def test_signal_wakes_a_waiting_run(make_app: Any, calls: Any) -> None:
    clock = cf.FakeClock()
    app = make_app(clock=clock)
    register_approval(app, calls, timeout=None)
    tester = WorkflowTester(app)
    run_id = app.start("approval").id
    await tester.run_until_idle()  # nothing timed is left: it waits
    st = app.status(run_id)
    assert st.status == "waiting" and st.waiting_on == ["decision"] and st.wake_at is None
    claims = claim_count(app, run_id)
    await tester.run_until_idle()
    assert claim_count(app, run_id) == claims  # a waiting run costs no executions
    app.signal(run_id, "decision", ["ok", 1])
    await tester.run_until_idle(advance=False)
    st = app.status(run_id)
    assert st.status == "completed" and st.output == ["ok", 1]


async def test_wait_for_timeout_raises_wait_timeout(make_app: Any, calls: Any) -> None:
    clock = cf.FakeClock()
    app = make_app(clock=clock)
    register_approval(app, calls, timeout=2 * DAY)
    start = clock.time()
    result = await WorkflowTester(app).run("approval")
    assert result.status == "completed", result.error
    assert result.output["expired"] == "decision"
    waited = result.output["at"].timestamp() - start
    assert 2 * DAY + 3600 <= waited < 2 * DAY + 3600 + 1
    assert calls.lines() == ["request", "timed out"]
    assert result.steps["decision"].status == "timeout"
    # a late signal is refused once the run is over
    with pytest.raises(cf.RunFinishedError):
        app.signal(result.run.id, "decision", "too late")


async def test_uncaught_wait_timeout_fails_the_run(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    @app.workflow("strict")
    async def strict(ctx: cf.Context, _: Any) -> Any:
        return await ctx.wait_for("go", timeout=60)

    result = await WorkflowTester(app).run("strict")
    assert result.status == "failed"
    assert error_type(result.error) == "chainflow.errors.WaitTimeout"
    assert result.error is not None
    assert "'go'" in result.error["message"]


@pytest.mark.parametrize("path", ["closure", "group commit"])
def test_signal_racing_with_suspend_is_not_lost(make_app: Any, path: str) -> None:
    """A signal committed while the worker is suspending the run must still wake it.

    Interleaving forced here: the signal's transaction has written the signal but not
    committed when the worker's suspend transaction runs (and looks for pending
    signals); the signal commits right after."""
    import threading

    from chainflow.storage import store

    app = make_app()

    @app.workflow("await-go")
    async def await_go(ctx: cf.Context, _: Any) -> Any:
        return await ctx.wait_for("go")

    run_id = app.start("await-go").id
    app.ensure_schema()
    with app.engine.begin() as conn:
        (claim,) = store.claim(conn, "worker-1", 1, time.time(), 30.0, workflows=["await-go"])
    assert claim.run_id == run_id

    sender = app.engine.connect()
    tx = sender.begin()
    store.insert_signal(sender, run_id, "go", '"now"', time.time())

    def suspend() -> None:
        if path == "closure":
            with app.engine.begin() as conn:
                store.suspend_run(conn, run_id, "waiting", None, ["go"], time.time())
            return
        # as a worker parks: its group commit, where Postgres runs the suspend and the
        # look for the signal as statements of their own, in bulk with other runs'
        committer = Committer(app.engine)

        async def park() -> None:
            try:
                await committer.write(run_id, claim.fence, store.suspension(
                    committer.dialect, run_id, "waiting", None, ["go"], time.time()))
            finally:
                await committer.close()

        asyncio.run(park())

    worker_side = threading.Thread(target=suspend)
    worker_side.start()
    time.sleep(0.3)  # the suspend runs (Postgres) or queues for the write lock (SQLite)
    tx.commit()
    sender.close()
    worker_side.join(10)
    st = app.status(run_id)
    assert st.status == "waiting" and st.waiting_on == ["go"]
    assert st.wake_at is not None, "the run waits for a signal that already arrived: lost wake-up"


def test_batched_signals_wake_the_runs_parked_on_them(make_app: Any) -> None:
    """``insert_signals`` (the tracker's finalised submissions in one transaction): every
    signal is kept, in order, and only a run parked on its signal's name is woken; a
    suspend after the batch sees its signals (the lost wake-up, from the other side)."""
    from chainflow.storage import store
    from chainflow.storage.schema import signals

    app = make_app()
    app.ensure_schema()
    with app.engine.begin() as conn:
        ids = [store.insert_run(conn, workflow="w", input_text="null", input_hash="h", idempotency_key=None,
                                deadline=None, now=1.0) for _ in range(4)]
        store.suspend_run(conn, ids[0], "waiting", None, ["a"], 2.0)
        store.suspend_run(conn, ids[1], "waiting", None, ["b"], 2.0)
        store.suspend_run(conn, ids[2], "sleeping", 50.0, [], 2.0)
        sent = [(ids[0], "a", '"1"'), (ids[1], "a%", '"2"'), (ids[2], "a", '"3"'), (ids[3], "c", '"4"'),
                (ids[0], "a", '"5"')]
        store.insert_signals(conn, sent, 3.0)
        store.suspend_run(conn, ids[3], "waiting", None, ["c"], 4.0)
        store.insert_signals(conn, [], 5.0)
        rows = list(conn.execute(sa.select(signals.c.run_id, signals.c.name, signals.c.payload)
                                 .order_by(signals.c.id)))
    assert [tuple(r) for r in rows] == sent
    assert [app.status(i).wake_at for i in ids] == [3.0, None, 50.0, 4.0]


def test_a_signal_wakes_only_the_runs_parked_on_exactly_its_name(make_app: Any) -> None:
    """A signal "go" woke (made due, re-claimed and replayed) a run parked on "Go" on
    SQLite, whose LIKE ignores ASCII case, and one parked on 'x"go' on both backends
    (the quoted name matched inside the escaped one)."""
    from chainflow.storage import store

    app = make_app()
    app.ensure_schema()
    parked = [["Go"], ['x"go'], ["ago"], ["go "], ["g_"], ["a", "go"], ["go", "b"], ['"go"', "go"]]
    with app.engine.begin() as conn:
        ids = [store.insert_run(conn, workflow="w", input_text="null", input_hash="h", idempotency_key=None,
                                deadline=None, now=1.0) for _ in parked]
        for run_id, names in zip(ids, parked):
            store.suspend_run(conn, run_id, "waiting", None, names, 2.0)
        store.insert_signals(conn, [(run_id, "go", "null") for run_id in ids], 3.0)
    woken = [names for run_id, names in zip(ids, parked) if app.status(run_id).wake_at is not None]
    assert woken == [["a", "go"], ["go", "b"], ['"go"', "go"]]


async def test_repeated_waits_take_signals_in_order(make_app: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    @app.workflow("collect")
    async def collect(ctx: cf.Context, n: int) -> list[Any]:
        return [await ctx.wait_for("item") for _ in range(n)]

    run_id = app.start("collect", 3).id
    app.signal(run_id, "item", "first")
    app.signal(run_id, "item", "second")
    tester = WorkflowTester(app)
    await tester.run_until_idle()
    assert app.status(run_id).status == "waiting"
    app.signal(run_id, "item", "third")
    await tester.run_until_idle()
    st = app.status(run_id)
    assert st.status == "completed" and st.output == ["first", "second", "third"]
    assert [e.key for e in app.journal(run_id)] == ["item", "item#1", "item#2"]


@pytest.mark.parametrize("name", ["paiement-reçu", 'say "yes"', "a\\b", "50%_off"])
async def test_a_signal_of_any_name_wakes_the_run_parked_on_it(make_app: Any, name: str) -> None:
    """Signal names are matched in the parked run's JSON list: non-ASCII letters, quotes
    and backslashes (escaped by JSON) and LIKE's wildcards must not make the match miss
    (a run left parked for good) or hit another name."""
    app = make_app()

    @app.workflow("waiter")
    async def waiter(ctx: cf.Context, signal: str) -> Any:
        return await ctx.wait_for(signal)

    # a name LIKE would match if its wildcards were not escaped ("50x_off" for "50%_off")
    lookalike = app.start("waiter", name.replace("%", "x")).id
    run_id = app.start("waiter", name).id
    async with running_worker(app):
        await wait_status(app, run_id, ["waiting"])
        await wait_status(app, lookalike, ["waiting"])
        app.signal(run_id, name, "paid")
        st = await wait_status(app, run_id, timeout=5)
        if "%" in name:
            app.signal(lookalike, name, "not yours")  # not its name: it stays parked
            await asyncio.sleep(0.3)
            assert app.status(lookalike).status == "waiting"
    assert st.status == "completed" and st.output == "paid"
