"""Statements whose result nobody reads (``store.Exec``) go through a group commit as
one executemany per statement for the whole batch (psycopg pipelines it: one round
trip on Postgres instead of one per run), and a bad one still fails only its own
run's write."""

from __future__ import annotations

import asyncio
from typing import Any

import sqlalchemy as sa

import chainflow as cf
from chainflow.runtime.committer import Committer
from chainflow.storage import store
from chainflow.storage.schema import signals
from tests.statements import captured

from .test_commit_thread import _runs


_INSERT = signals.insert()  # built once, as the stores build theirs: ops are grouped by statement


def _signal(run_id: str, name: str | None) -> store.Exec:
    return store.Exec(_INSERT, {"run_id": run_id, "name": name, "payload": "null", "created_at": 1.0,
                                         "consumed": False})


def _names(app: cf.Chainflow) -> dict[str, list[str]]:
    with app.engine.connect() as conn:
        found: dict[str, list[str]] = {}
        for r in conn.execute(sa.select(signals.c.run_id, signals.c.name).order_by(signals.c.id)):
            found.setdefault(r.run_id, []).append(r.name)
        return found


async def test_a_batch_runs_each_statement_once_for_all_its_runs(make_app: Any) -> None:
    app = make_app()
    ids = _runs(app, 6)
    committer = Committer(app.engine)

    def closure(conn: sa.Connection) -> int:
        return int(conn.exec_driver_sql("SELECT 7").scalar_one())

    try:
        with captured(app, kind="INSERT INTO CF_SIGNALS") as inserts:
            results = await asyncio.gather(*(committer.write(run_id, 0, [_signal(run_id, "a"), closure,
                                                                         _signal(run_id, "b")])
                                             for run_id in ids))
    finally:
        await committer.close()
    assert results == [[None, 7, None]] * 6, "each op answers in its place"
    assert len(inserts) == 1 and len(inserts[0][1]) == 12, "one executemany of every run's rows"
    assert _names(app) == {run_id: ["a", "b"] for run_id in ids}


async def test_a_failing_statement_fails_only_its_own_runs_write(make_app: Any) -> None:
    app = make_app()
    ids = _runs(app, 4)
    committer = Committer(app.engine)
    try:
        results = await asyncio.gather(*(committer.write(run_id, 0, [_signal(run_id, None if i == 2 else "ok")])
                                         for i, run_id in enumerate(ids)), return_exceptions=True)
    finally:
        await committer.close()
    assert isinstance(results[2], sa.exc.IntegrityError), results[2]
    assert [r for i, r in enumerate(results) if i != 2] == [[None]] * 3
    assert _names(app) == {run_id: ["ok"] for i, run_id in enumerate(ids) if i != 2}


def test_an_exec_is_also_a_plain_closure(make_app: Any) -> None:
    app = make_app()
    run_id, = _runs(app, 1)
    app.database.tx(_signal(run_id, "alone"))
    assert _names(app) == {run_id: ["alone"]}

