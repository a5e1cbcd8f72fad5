"""Statements whose result nobody reads (``store.Exec``) go through a group commit as
one executemany per statement for the whole batch (psycopg pipelines it: one round
trip on Postgres instead of one per run); the queries runs open their writes with
(``store.Query``) go out together in one pipeline on Postgres; and a bad one of either
still fails only its own run's write."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
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



_NAMES_OF = sa.select(signals.c.name).where(signals.c.run_id == sa.bindparam("rid")).order_by(signals.c.id)


def _names_query(run_id: str) -> store.Query:
    return store.Query(_NAMES_OF, {"rid": run_id}, lambda rows: [r.name for r in rows])


async def test_queries_opening_a_batch_go_out_together_and_answer_each_run(
        make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """On Postgres one pipeline for the whole batch; each run gets its own rows, and a
    query after a closure of its run still sees what that closure wrote."""
    app = make_app()
    ids = _runs(app, 6)
    app.database.tx(lambda conn: [_signal(run_id, "before")(conn) for run_id in ids])
    pipelines: list[int] = []
    if app.engine.dialect.name == "postgresql":
        import psycopg

        pipeline = psycopg.Connection.pipeline

        def counted(self: Any) -> Any:
            pipelines.append(1)
            return pipeline(self)

        monkeypatch.setattr(psycopg.Connection, "pipeline", counted)
    committer = Committer(app.engine)
    try:
        results = await asyncio.gather(*(committer.write(run_id, 0, [_names_query(run_id), _signal(run_id, "in"),
                                                                     lambda conn: None, _names_query(run_id)])
                                         for run_id in ids))
    finally:
        await committer.close()
    # the leading query ran before the run's writes; the one after its closure, in order
    # (the signal it inserts is data, written once every closure has run)
    assert results == [[["before"], None, None, ["before"]]] * 6
    assert _names(app) == {run_id: ["before", "in"] for run_id in ids}
    assert len(pipelines) == (1 if app.engine.dialect.name == "postgresql" else 0)


async def test_a_query_refusing_its_rows_rolls_back_only_its_own_runs_write(make_app: Any) -> None:
    app = make_app()
    ids = _runs(app, 4)
    committer = Committer(app.engine)

    def refuse(names: list[str]) -> list[str]:
        raise LookupError("not settled")

    try:
        results = await asyncio.gather(*(committer.write(run_id, 0, [
            _names_query(run_id).then(refuse) if i == 1 else _names_query(run_id), _signal(run_id, "w")])
            for i, run_id in enumerate(ids)), return_exceptions=True)
    finally:
        await committer.close()
    assert isinstance(results[1], LookupError)
    assert [r for i, r in enumerate(results) if i != 1] == [[[], None]] * 3
    assert _names(app) == {run_id: ["w"] for i, run_id in enumerate(ids) if i != 1}
