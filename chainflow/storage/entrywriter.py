"""The cheapest durable path for the writes every run makes: its creation, fenced
journal rows (step results) and its finish.

A batch of the group commit that holds nothing but these (the common case) skips
SQLAlchemy's transaction machinery and goes through a driver connection of its own.
On SQLite that is BEGIN IMMEDIATE, the inserts, the fence read, the finishes and
COMMIT without leaving C for long; on Postgres a round trip costs more than the
statements, so the whole batch is one autocommit statement: one round trip per batch
instead of one per statement plus BEGIN and COMMIT.

Driver errors leave as SQLAlchemy's own exception classes, so callers tell a database
outage from a bad row the same way on both paths.  When the connection breaks with a
Postgres batch in flight, the batch is settled from what the tables hold
(``recovery.settle_batch``) instead of being reported failed: it may have committed.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from . import recovery, store
from .schema import journal, runs


_FENCE = ("id", "fence")
_FINISH = ("id", "status", "output", "error", "now")  # "now": the run's new updated_at


class EntryWriter:
    """Owns one driver connection, used from one thread at a time (the committer's)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._paramstyle = engine.dialect.paramstyle
        self._postgres = engine.dialect.name == "postgresql"
        self._pooled: Any = None  # the pool's proxy, handed back on close
        self._process: tuple[int, str] | None = None  # Postgres: the server process behind it

    def close(self) -> None:
        if self._pooled is not None:
            if self._postgres:
                self._pooled.dbapi_connection.autocommit = False  # as the pool hands it out
            self._pooled.close()
            self._pooled = None

    def write(self, fences: dict[str, int], rows: list[dict[str, Any]], new_runs: list[dict[str, Any]],
              finishes: list[store.RunFinish]) -> tuple[set[str], set[str], dict[str, store.RunRow]]:
        """Create ``new_runs``; insert the ``rows`` and apply the ``finishes`` of the runs
        still ours (per ``fences``).  Returns (runs still ours, runs created, finished
        runs' rows as written)."""
        try:
            dbapi = self._connection()
            if self._postgres:
                return self._write_postgres(dbapi, fences, rows, new_runs, finishes)
            return self._write_sqlite(dbapi, fences, rows, new_runs, finishes)
        except self._engine.dialect.loaded_dbapi.Error as exc:
            process = self._process
            if isinstance(exc, self._engine.dialect.loaded_dbapi.OperationalError) and self._pooled is not None:
                self._pooled.invalidate()  # the next batch reconnects
                self._pooled = None
                self._process = None
            error = sa.exc.DBAPIError.instance(None, None, exc, self._engine.dialect.loaded_dbapi.Error)
            if self._postgres and process is not None and recovery.reply_lost(error):
                # the batch was sent and may have committed: its answer comes from the tables
                return recovery.settle_batch(self._engine, process, error, rows if fences else [], new_runs,
                                             finishes if fences else [])
            raise error from exc

    def _connection(self) -> Any:
        if self._pooled is None:
            self._pooled = self._engine.raw_connection()
            if self._postgres:
                self._pooled.dbapi_connection.autocommit = True
                self._process = recovery.server_process(self._pooled.dbapi_connection)
        return self._pooled.dbapi_connection

    def _write_sqlite(self, dbapi: Any, fences: dict[str, int], rows: list[dict[str, Any]],
                      new_runs: list[dict[str, Any]], finishes: list[store.RunFinish],
                      ) -> tuple[set[str], set[str], dict[str, store.RunRow]]:
        dbapi.begin_write()
        try:
            created = store.insert_runs(dbapi, self._paramstyle, new_runs)
            ours = store.fences_ok(dbapi, self._paramstyle, fences)
            store.insert_entries(dbapi, self._paramstyle, [r for r in rows if r["run_id"] in ours])
            finished = store.finish_runs(dbapi, self._paramstyle, [f for f in finishes if f.run_id in ours])
            dbapi.commit()
        except BaseException:
            dbapi.rollback()
            raise
        return ours, created, finished

    def _write_postgres(self, dbapi: Any, fences: dict[str, int], rows: list[dict[str, Any]],
                        new_runs: list[dict[str, Any]], finishes: list[store.RunFinish],
                        ) -> tuple[set[str], set[str], dict[str, store.RunRow]]:
        if not fences:  # journal rows and finishes belong to fenced runs
            rows, finishes = [], []
        parts = (
            (store.NEW_RUN_COLUMNS, [[row.get(c) for c in store.NEW_RUN_COLUMNS] for row in new_runs]),
            (_FENCE, [[run_id, fence] for run_id, fence in fences.items()]),
            (store.ENTRY_COLUMNS, [[row.get(c) for c in store.ENTRY_COLUMNS] for row in rows]),
            (_FINISH, [[f.run_id, f.status, f.output, f.error, f.now] for f in finishes]),
        )
        params: list[Any] = []
        for names, records in parts:
            if len(records) == 1:  # one record: its values as parameters
                params.extend(records[0])
            elif records:
                # several travel as one JSON text: the driver's array adaptation costs
                # more CPU per column than the whole statement's round trip on a local server
                params.append(json.dumps([dict(zip(names, record)) for record in records]))
        ours: set[str] = set()
        created: set[str] = set()
        finished: dict[str, store.RunRow] = {}
        if not params:
            return ours, created, finished
        with dbapi.cursor() as cursor:
            cursor.execute(_postgres_sql(*(min(len(records), 2) for _, records in parts)), params)
            for is_new, run_id, *row in cursor.fetchall():
                if is_new:
                    created.add(run_id)
                    continue
                ours.add(run_id)
                if row and row[0] is not None:
                    finished[run_id] = store.RunRow(*row)
        return ours, created, finished


@functools.cache
def _postgres_sql(new_runs: int, fenced: int, entries: int, finishes: int) -> str:
    """One statement for a whole batch: insert the new runs (skipping taken idempotency
    keys), share-lock the runs whose fence still matches, insert their journal rows,
    finish those that end.  Each part's count is 0 (the batch has none: the part is left
    out, as each costs planning and execution even when empty), 1 or 2 (several).
    Several records travel as one JSON record set, which keeps the text the same for
    any batch size, so the server prepares each shape once; one record (every commit of
    a run executing alone) travels as plain parameters: parsing JSON costs the server
    more than the rest of such a statement (~80 µs of a ~400 µs commit here).  The
    answer has a row per new run created and per run still ours, with its row as
    written if it finished (only when the batch finishes runs)."""
    dialect = postgresql.dialect()

    def records(table: sa.Table, names: tuple[str, ...], alias: str, count: int) -> str:
        types = [table.c[n if n != "now" else "updated_at"].type.compile(dialect=dialect) for n in names]
        if count == 1:
            return f"(VALUES ({', '.join(f'%s::{t}' for t in types)})) AS {alias}({', '.join(names)})"
        columns = ", ".join(f"{n} {t}" for n, t in zip(names, types))
        return f"json_to_recordset(%s::json) AS {alias}({columns})"

    # the finished rows' columns, or nothing when the batch finishes no run
    nulls = "".join(f", NULL::{runs.c[c].type.compile(dialect=dialect)}" for c in store.RUN_COLUMNS) \
        if finishes else ""
    parts, answers = [], []
    if new_runs:
        columns = ", ".join(store.NEW_RUN_COLUMNS)
        parts.append(f"new AS (INSERT INTO {runs.name} ({columns}) SELECT * FROM "
                     f"{records(runs, store.NEW_RUN_COLUMNS, 'n', new_runs)} ON CONFLICT DO NOTHING RETURNING id)")
        answers.append(f"SELECT true, new.id{nulls} FROM new")
    if fenced:
        parts.append(f"ours AS (SELECT r.id FROM {runs.name} r JOIN {records(runs, _FENCE, 'f', fenced)} "
                     f"ON r.id = f.id AND r.fence = f.fence ORDER BY r.id FOR SHARE OF r)")
        answers.append(f"SELECT false, ours.id{nulls} FROM ours")
    if fenced and entries:
        columns = ", ".join(store.ENTRY_COLUMNS)
        parts.append(f"ins AS (INSERT INTO {journal.name} ({columns}) "
                     f"SELECT {columns} FROM {records(journal, store.ENTRY_COLUMNS, 'e', entries)} "
                     f"WHERE e.run_id IN (SELECT id FROM ours))")
    if fenced and finishes:
        parts.append(
            f"fin AS (UPDATE {runs.name} SET {store.finish_set('x.status', 'x.output', 'x.error', 'x.now')} "
            f"FROM {records(runs, _FINISH, 'x', finishes)} "
            f"WHERE {runs.name}.id = x.id AND {runs.name}.id IN (SELECT id FROM ours) "
            f"RETURNING {', '.join(f'{runs.name}.{c}' for c in store.RUN_COLUMNS)})")
        finished = ", ".join(f"fin.{c}" for c in store.RUN_COLUMNS)
        answers[-1] = f"SELECT false, ours.id, {finished} FROM ours LEFT JOIN fin ON fin.id = ours.id"
    return f"WITH {', '.join(parts)} {' UNION ALL '.join(answers)}"
