"""The committer's answers when a write may already have landed: a write found
identical in the journal is no step failure (any backend); a lost reply the database
cannot settle abandons the execution and applies nothing again (Postgres)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import chainflow as cf
from chainflow.errors import LeaseLostError
from chainflow.runtime.committer import Committer
from chainflow.storage import store
from chainflow.storage.schema import journal

from .pg_wire import ReplyDropper
from .tcp_proxy import UP, Link, TcpProxy
from .test_lost_reply import proxied


def _run(app: cf.Chainflow) -> str:
    @app.workflow("noop")
    async def noop(ctx: cf.Context, _: int) -> None:
        return None

    return app.start("noop", 0).id  # unclaimed: fence 0


def _entry(run_id: str, output: str) -> store.EntryInsert:
    return store.EntryInsert(dict(run_id=run_id, branch="", position=0, key="s", kind="step", status="ok",
                                  output=output, error=None, attempts=1, started_at=1.0, finished_at=2.0))


@pytest.mark.parametrize("in_thread", [False, True], ids=["inline", "thread"])
async def test_a_write_already_in_the_journal_is_no_failure(make_app: Any, in_thread: bool) -> None:
    app = make_app()
    run_id = _run(app)
    committer = Committer(app.engine, in_thread=in_thread)
    try:
        assert await committer.write(run_id, 0, [_entry(run_id, '"a"')]) == [None]
        assert await committer.write(run_id, 0, [_entry(run_id, '"a"')]) == [None]  # landed: success
        with pytest.raises(sa.exc.IntegrityError):  # another payload in that slot is a real conflict
            await committer.write(run_id, 0, [_entry(run_id, '"b"')])
    finally:
        await committer.close()
    with app.engine.begin() as conn:
        assert conn.execute(sa.select(journal.c.output).where(journal.c.run_id == run_id)).scalars().all() == ['"a"']


@pytest.mark.postgres
@pytest.mark.parametrize("in_thread", [False, True], ids=["inline", "thread"])
async def test_a_lost_reply_nobody_can_settle_abandons_and_applies_nothing_twice(
        pg_url: str, in_thread: bool) -> None:
    direct = cf.Chainflow(pg_url)
    run_id = _run(direct)
    lost = ReplyDropper(lambda sql, _: sql.startswith("WITH ") and "cf_journal" in sql)

    def policy(link: Link, direction: str, chunk: bytes) -> bytes | None:
        if lost.dropped:  # from the lost answer on, the database is unreachable
            return None
        return lost(link, direction, chunk)

    target = make_url(pg_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432, policy, lifetime=60) as proxy:
        engine = sa.create_engine(proxied(pg_url, proxy.port), pool_pre_ping=True)
        committer = Committer(engine, in_thread=in_thread)
        try:
            t0 = time.monotonic()
            with pytest.raises(LeaseLostError):
                await committer.write(run_id, 0, [_entry(run_id, '"a"')])
            assert time.monotonic() - t0 < 10
        finally:
            await committer.close()
            engine.dispose()
    assert len(lost.dropped) == 1
    with direct.engine.begin() as conn:  # it had committed, once
        assert conn.execute(sa.select(journal.c.output).where(journal.c.run_id == run_id)).scalars().all() == ['"a"']
    assert direct.status(run_id).status == "pending"
    direct.engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("in_thread", [False, True], ids=["inline", "thread"])
@pytest.mark.parametrize("lost", [2, None], ids=["link-back", "link-gone"])
async def test_a_write_that_never_arrived_is_sent_again_once(pg_url: str, in_thread: bool, lost: int | None) -> None:
    """The link breaks as a batch's statement is sent, so nothing of it lands.  Each
    write is retried alone, and one whose retry is cut too gets one more try on a new
    connection: with the link back the writes land (no execution abandoned, no step to
    run again); with the link gone, the writes after the one that failed twice fail
    without trying (each try costs a connection)."""
    direct = cf.Chainflow(pg_url)
    first = _run(direct)
    second = direct.start("noop", 1).id
    cuts: list[int] = []

    def policy(link: Link, direction: str, chunk: bytes) -> bytes | None:
        if direction == UP and b"INSERT INTO cf_journal" in chunk and (lost is None or len(cuts) < lost):
            cuts.append(link.id)
            return None  # the request dies with the link: the server never sees it
        return chunk

    target = make_url(pg_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432, policy, lifetime=60) as proxy:
        engine = sa.create_engine(proxied(pg_url, proxy.port))
        committer = Committer(engine, in_thread=in_thread)
        try:  # two writes of one loop round: one batch
            outcomes = await asyncio.gather(committer.write(first, 0, [_entry(first, '"a"')]),
                                            committer.write(second, 0, [_entry(second, '"b"')]),
                                            return_exceptions=True)
        finally:
            await committer.close()
            engine.dispose()
    with direct.engine.begin() as conn:
        written = conn.execute(sa.select(journal.c.run_id, journal.c.output)).all()
    direct.engine.dispose()
    if lost is not None:
        assert outcomes == [[None], [None]]
        assert sorted(written) == sorted([(first, '"a"'), (second, '"b"')])
        assert len(cuts) == 2  # the batch, then the first write alone: its second try lands
    else:
        assert all(isinstance(o, sa.exc.OperationalError) for o in outcomes), outcomes
        assert written == []
        assert len(cuts) == 3  # the batch, the first write alone twice; the second not tried
