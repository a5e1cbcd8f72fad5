"""Group commit on a local Postgres: a batch of journal rows only goes out on an
asyncio connection, so the event loop runs on while the server commits it; writes
arriving meanwhile form the next batch, every write still resumes only once durable,
and a run's later step still waits for a batch in flight that carries its earlier row."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import chainflow as cf
from chainflow.runtime.committer import Committer
from chainflow.storage.schema import journal
from tests.faults.tcp_proxy import UP, Link, TcpProxy
from tests.faults.test_commit_outcome import entry
from tests.faults.test_lost_reply import proxied

from ._util import running_worker, ticks_during, wait_status
from .test_commit_thread import carries_the_nap, pair_workflow, unclaimed_runs

pytestmark = pytest.mark.postgres

DELAY = 0.3  # s the proxy holds each journal statement: a slow commit


def _slow_journal(link: Link, direction: str, chunk: bytes) -> bytes:
    if direction == UP and b"cf_journal" in chunk:
        time.sleep(DELAY)
    return chunk


@pytest.fixture
def slow_engine(pg_url: str) -> Iterator[sa.Engine]:
    """An engine whose journal statements reach the server ``DELAY`` late."""
    target = make_url(pg_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432, _slow_journal, lifetime=60) as proxy:
        engine = sa.create_engine(proxied(pg_url, proxy.port))
        yield engine
        engine.dispose()


def _journal(app: cf.Chainflow) -> list[tuple[str, str]]:
    with app.engine.begin() as conn:
        return sorted((r.run_id, r.output) for r in conn.execute(sa.select(journal.c.run_id, journal.c.output)))


async def test_the_loop_runs_on_while_the_server_commits_a_batch(pg_url: str, slow_engine: sa.Engine) -> None:
    app = cf.Chainflow(pg_url)
    run_id, = unclaimed_runs(app, 1)
    committer = Committer(slow_engine)
    try:
        answer, ticks = await ticks_during(committer.write(run_id, 0, [entry(run_id, '"a"')]))
    finally:
        await committer.close()
    assert answer == [None]
    assert ticks >= 10, ticks
    assert _journal(app) == [(run_id, '"a"')]
    app.engine.dispose()


async def test_writes_made_during_a_commit_share_the_next_one(pg_url: str, slow_engine: sa.Engine) -> None:
    app = cf.Chainflow(pg_url)
    ids = unclaimed_runs(app, 6)
    committer = Committer(slow_engine)
    batches: list[int] = []
    write_async = committer._writer.write_async

    async def counted(fences: dict[str, int], *rest: Any) -> Any:
        batches.append(len(fences))
        return await write_async(fences, *rest)

    committer._writer.write_async = counted  # type: ignore[method-assign,assignment]
    try:
        first = asyncio.ensure_future(committer.write(ids[0], 0, [entry(ids[0], '"0"')]))
        await asyncio.sleep(0.05)  # the first batch is in flight
        rest = [asyncio.ensure_future(committer.write(run_id, 0, [entry(run_id, f'"{i}"')]))
                for i, run_id in enumerate(ids[1:], 1)]
        assert await asyncio.gather(first, *rest) == [[None]] * 6
    finally:
        await committer.close()
    assert batches == [1, 5]
    assert _journal(app) == sorted((run_id, f'"{i}"') for i, run_id in enumerate(ids))
    app.engine.dispose()


async def test_closing_waits_for_the_batch_in_flight(pg_url: str, slow_engine: sa.Engine) -> None:
    """The committer closing (its worker stopping) does not abandon a batch the server
    may be committing: its writer learns how it ended."""
    app = cf.Chainflow(pg_url)
    run_id, = unclaimed_runs(app, 1)
    committer = Committer(slow_engine)
    write = asyncio.ensure_future(committer.write(run_id, 0, [entry(run_id, '"a"')]))
    await asyncio.sleep(0.05)  # in flight
    await committer.close()
    assert write.done() and write.result() == [None]
    assert _journal(app) == [(run_id, '"a"')]
    app.engine.dispose()


async def test_a_step_waits_for_a_batch_in_flight_that_carries_an_earlier_step_row(pg_url: str) -> None:
    """``test_commit_thread``'s ordering test, with the write carrying a1's row in
    flight on the asyncio connection instead of in the commit thread."""
    app = cf.Chainflow(pg_url)
    seen = pair_workflow(app)
    async with running_worker(app, commit_in_thread=False) as worker:
        writer = worker.committer._writer
        write_async = writer.write_async

        async def slowly(fences: dict[str, int], rows: list[dict[str, Any]], *rest: Any) -> Any:
            if carries_the_nap(rows):
                await asyncio.sleep(0.3)  # the write carrying a1's row is in flight when a2 could start
            return await write_async(fences, rows, *rest)

        writer.write_async = slowly  # type: ignore[method-assign]
        run_id = app.start("pair").id
        st = await wait_status(app, run_id)
    assert st.status == "completed", st.error
    assert seen == [["a1", "nap"]]
    app.engine.dispose()
