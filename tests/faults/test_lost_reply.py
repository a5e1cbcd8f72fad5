"""Lost commit replies (Postgres): the server commits a batch, the connection breaks
before the worker reads the answer.  A loopback proxy between the worker and Postgres
drops the answers to group-commit statements (one autocommit statement per batch) and
to COMMITs of batches with closures (a retried step's attempt row), then cuts the
link.  Every such write did commit; none may fail its step, run a compensation or be
applied twice, and no step may run again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import chainflow as cf
from chainflow.storage import codec, store
from chainflow.storage.schema import attempts, journal, runs
from chainflow.testing import CallLog

from .pg_wire import ReplyDropper
from .tcp_proxy import TcpProxy

RUNS = 2000
# every 8th group-commit statement, at most 12 of them: a fast machine packs the runs
# into fewer, larger batches (CI saw 119, and every 15th then lost only 7 answers)
BATCH_EVERY, BATCH_DROPS = 8, 12
COMMIT_EVERY, COMMIT_DROPS = 10, 4  # every 10th COMMIT of a batch with closures


def steps_of(i: int) -> int:
    return 1 + i % 3


class Chooser:
    """Which answers the proxy loses: counted across connections."""

    def __init__(self) -> None:
        self.batches = self.commits = 0
        self.dropped_batches = self.dropped_commits = 0

    def __call__(self, sql: str, transaction: list[str]) -> bool:
        if sql.startswith("WITH ") and "cf_journal" in sql:  # the group commit's one statement
            self.batches += 1
            if self.batches % BATCH_EVERY == 0 and self.dropped_batches < BATCH_DROPS:
                self.dropped_batches += 1
                return True
        elif sql.strip().upper() == "COMMIT" and any("cf_attempts" in s for s in transaction):
            self.commits += 1
            if self.commits % COMMIT_EVERY == 0 and self.dropped_commits < COMMIT_DROPS:
                self.dropped_commits += 1
                return True
        return False


def proxied(url: str, port: int) -> str:
    parsed = make_url(url)
    return parsed.set(host="127.0.0.1", port=port, query={**parsed.query, "sslmode": "disable"}) \
        .render_as_string(hide_password=False)


def register(app: cf.Chainflow, calls: CallLog) -> None:
    flaky: set[int] = set()

    def effect(i: int, k: int) -> str:
        if k == 0 and i % 8 == 0 and i not in flaky:  # fails once: its retry writes an attempt row
            flaky.add(i)
            raise RuntimeError(f"transient {i}")
        calls.hit(f"{i}:{k}")
        return f"{i}:{k}"

    def undo(_: str) -> None:
        calls.hit("compensation")

    @app.workflow("pay")
    async def pay(ctx: cf.Context, i: int) -> list[str]:
        return [await ctx.step(f"s{k}", effect, i, k, compensate=undo, retry=cf.Retry(initial=0.01, jitter=0))
                for k in range(steps_of(i))]


def insert_runs(app: cf.Chainflow) -> None:
    """The runs, pending, in one statement (creation is not under test here)."""
    rows = []
    for i in range(RUNS):
        text = codec.dumps(i)
        rows.append(store.run_row(workflow="pay", input_text=text, idempotency_key=None, deadline=None,
                                  now=time.time(),
                                  input_hash=hashlib.sha256(f"pay\0{text}".encode()).hexdigest()))
    with app.engine.begin() as conn:
        conn.execute(runs.insert(), rows)


async def drive(app: cf.Chainflow, in_thread: bool, budget: float) -> None:
    worker = app.worker(concurrency=32, commit_in_thread=in_thread, lease=3.0, poll_interval=0.05, track=False)
    await worker.start()
    until = time.monotonic() + budget
    try:
        while True:
            await worker.drain()
            open_runs = await app.adb(lambda c: c.execute(
                sa.select(sa.func.count()).where(runs.c.status.not_in(store.TERMINAL))).scalar_one())
            if not open_runs or time.monotonic() > until:
                return
            await asyncio.sleep(0.05)
    finally:
        await worker.close()


@pytest.mark.postgres
@pytest.mark.timeout(300)
@pytest.mark.parametrize("in_thread", [False, True], ids=["inline", "thread"])
def test_lost_commit_replies_fail_no_step_and_repeat_none(pg_url: str, tmp_path: Path, in_thread: bool) -> None:
    calls = CallLog(tmp_path / "calls.log")
    direct = cf.Chainflow(pg_url)
    register(direct, calls)
    direct.ensure_schema()
    insert_runs(direct)
    target = make_url(pg_url)
    chooser = Chooser()
    dropper = ReplyDropper(chooser)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432, dropper, lifetime=280) as proxy:
        app = cf.Chainflow(proxied(pg_url, proxy.port))
        register(app, calls)
        try:
            asyncio.run(drive(app, in_thread, budget=200))
        finally:
            app.engine.dispose()

    try:
        with direct.engine.begin() as conn:
            statuses: dict[str, int] = dict(
                conn.execute(sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)).all())
            compensations = conn.execute(
                sa.select(sa.func.count()).where(journal.c.kind == "compensation")).scalar_one()
            doubled = conn.execute(
                sa.select(journal.c.run_id, journal.c.branch, journal.c.key, sa.func.count())
                .group_by(journal.c.run_id, journal.c.branch, journal.c.key)
                .having(sa.func.count() > 1)).all()
            outputs = {(r.input, r.key): (r.status, r.output) for r in conn.execute(
                sa.select(runs.c.input, journal.c.key, journal.c.status, journal.c.output)
                .join(journal, journal.c.run_id == runs.c.id).where(journal.c.kind == "step"))}
            retried: dict[str, int] = dict(conn.execute(
                sa.select(runs.c.input, sa.func.count()).join(attempts, attempts.c.run_id == runs.c.id)
                .group_by(runs.c.input)).all())
            errors = conn.execute(sa.select(runs.c.error).where(runs.c.status == "failed").limit(3)).scalars().all()
    finally:
        direct.engine.dispose()

    # the proxy really lost answers of both kinds
    assert len(dropper.dropped) >= 8 and proxy.cuts == len(dropper.dropped), (len(dropper.dropped), proxy.cuts)
    assert chooser.dropped_batches >= 8 and chooser.dropped_commits >= 1, vars(chooser)
    assert statuses == {"completed": RUNS}, (statuses, errors)
    assert compensations == 0
    assert doubled == []
    # each retried step failed once: one attempt row, even when its COMMIT's answer was lost
    assert retried == {codec.dumps(i): 1 for i in range(0, RUNS, 8)}
    counts = calls.counts()
    assert counts["compensation"] == 0
    for i in range(RUNS):
        for k in range(steps_of(i)):
            label = f"{i}:{k}"
            assert counts[label] == 1, f"step {label} ran {counts[label]} times"
            assert outputs[(codec.dumps(i), f"s{k}")] == ("ok", codec.dumps(label)), label
    assert sum(counts.values()) == sum(steps_of(i) for i in range(RUNS))
