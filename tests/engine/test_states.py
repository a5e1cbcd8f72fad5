"""Stored states are the enums' texts, on SQLite and Postgres alike.

Workflows are driven through every state a run can rest in, and the tables are read
with plain SQL: each stored text must parse into its enum (a member bound as anything
but its value, e.g. ``RunState.COMPLETED``, would not), and the client API must hand
back members, not the raw text.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.chain import chainstore
from chainflow.chain.adapter import SignedTx
from chainflow.storage.schema import journal, runs, submissions
from chainflow.testing import WorkflowTester


def _register(app: cf.Chainflow) -> None:
    def broken() -> None:
        raise RuntimeError("ledger closed")

    def undo_fails(_: int) -> None:
        raise RuntimeError("cannot undo")

    @app.workflow("states")
    async def states(ctx: cf.Context, mode: str) -> str:
        await ctx.step("reserve", lambda: 1, retry=cf.Retry(max_attempts=1),
                       compensate=undo_fails if mode == "fail" else lambda _: None)
        if mode == "fail":
            await ctx.step("post", broken, retry=cf.Retry(max_attempts=1))
        elif mode == "sleep":
            await ctx.sleep("nap", 3600)
        elif mode in ("wait", "cancel"):
            await ctx.wait_for("go")
        elif mode == "give-up":
            try:
                await ctx.wait_for("never", timeout=60)
            except cf.WaitTimeout:
                pass
        return mode


def _stored(app: cf.Chainflow) -> tuple[dict[str, str], set[str]]:
    """Run id -> cf_runs.status, and every cf_journal.status, as the database holds them."""
    with app.engine.connect() as conn:
        by_run = {r.id: r.status for r in conn.execute(sa.select(runs.c.id, runs.c.status))}
        entries = set(conn.execute(sa.select(journal.c.status)).scalars())
    return by_run, entries


async def test_every_status_the_engine_stores_parses_into_its_enum(make_app: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    _register(app)
    tester = WorkflowTester(app)
    ids = {mode: app.start("states", mode).id for mode in ("complete", "fail", "sleep", "wait", "cancel", "give-up")}
    seen_runs: set[str] = set()
    seen_entries: set[str] = set()

    def snapshot() -> None:
        by_run, entries = _stored(app)
        seen_runs.update(by_run.values())
        seen_entries.update(entries)
        for run_id, text in by_run.items():
            st = app.status(run_id)
            assert type(st.status) is cf.RunState and st.status.value == text, (st.status, text)
            for e in app.journal(run_id):
                assert type(e.status) is cf.EntryState, e
            assert all(type(v) is cf.EntryState for v in st.compensations.values()), st.compensations

    await tester.run_until_idle(advance=False)  # sleep, wait, cancel and give-up park
    snapshot()
    app.cancel(ids["cancel"])
    await tester.run_until_idle()  # the clock jumps: the sleep ends, the give-up times out
    snapshot()

    assert {m: app.status(i).status for m, i in ids.items()} == {
        "complete": cf.RunState.COMPLETED, "fail": cf.RunState.FAILED, "sleep": cf.RunState.COMPLETED,
        "wait": cf.RunState.WAITING, "cancel": cf.RunState.CANCELLED, "give-up": cf.RunState.COMPLETED,
    }
    assert {"completed", "failed", "cancelled", "sleeping", "waiting"} <= seen_runs
    assert {cf.RunState(s) for s in seen_runs} <= set(cf.RunState)
    assert {"ok", "error", "pending", "timeout"} <= seen_entries
    assert {cf.EntryState(s) for s in seen_entries} <= set(cf.EntryState)
    assert app.status(ids["fail"]).compensations == {"reserve": cf.EntryState.ERROR}
    assert app.status(ids["cancel"]).compensations == {"reserve": cf.EntryState.OK}


def test_submission_states_are_stored_as_their_text(make_app: Any) -> None:
    """The submission store writes each state the protocol passes through (without a
    chain: the rows alone)."""
    app = make_app()
    app.ensure_schema()
    written: list[Any] = []  # whatever the driver hands back: checked below
    with app.engine.begin() as conn:
        def state() -> str:
            text = conn.execute(sa.select(submissions.c.state).where(submissions.c.id == sub_id)).scalar_one()
            written.append(text)
            return str(text)

        sub_id = int(chainstore.intent(conn, chain="c", sender="s", key="k", run_id="r", step="x", request="{}",
                                    finality="{}", now=1.0).id)
        assert state() == cf.SubmissionState.INTENT
        chainstore.seed_nonces(conn, "c", "s", 7)
        allocated = chainstore.allocate_nonce(conn, sub_id, "{}", 2.0)
        assert (allocated.id, allocated.nonce) == (sub_id, 7)
        assert state() == cf.SubmissionState.ALLOCATED
        chainstore.add_attempt(conn, sub_id, "c", SignedTx(raw=b"\x01", tx_hash="0x01", fees={}), 3.0)
        assert state() == cf.SubmissionState.SIGNED
        chainstore.mark_broadcast(sub_id, 4.0)(conn)
        assert state() == cf.SubmissionState.BROADCAST
        chainstore.mark_failed(conn, sub_id, "refused", 5.0)
        assert state() == cf.SubmissionState.FAILED
    assert [type(t) for t in written] == [str] * 5  # plain text back from the driver, not members
    assert [cf.SubmissionState(t).value for t in written] == ["intent", "allocated", "signed", "broadcast", "failed"]


def test_runs_filters_by_state_and_refuses_an_unknown_one(make_app: Any) -> None:
    app = make_app(clock=cf.FakeClock())
    _register(app)
    run_id = app.start("states", "wait").id
    assert [r.id for r in app.runs(status=cf.RunState.PENDING)] == [run_id]
    assert [r.id for r in app.runs(status="pending")] == [run_id]
    assert app.runs(status=cf.RunState.COMPLETED) == []
    with pytest.raises(ValueError, match=r"status must be one of pending, running, .*dead_lettered, got 'done'"):
        app.runs(status="done")
