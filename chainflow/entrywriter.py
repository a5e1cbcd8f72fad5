"""The cheapest durable path for the write every step makes: fenced journal rows.

A batch of the group commit that holds nothing but journal rows (the common case:
step results) skips SQLAlchemy's transaction machinery and goes through a driver
connection of its own.  On SQLite that is BEGIN IMMEDIATE, the fence read, the insert
and COMMIT without leaving C for long; on Postgres a round trip costs more than the
statement, so the fence check, the insert and the commit are one autocommit statement:
one round trip per batch instead of three.

Driver errors leave as SQLAlchemy's own exception classes, so callers tell a database
outage from a bad row the same way on both paths.
"""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from . import store
from .schema import journal, runs


class EntryWriter:
    """Owns one driver connection, used from one thread at a time (the committer's)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._paramstyle = engine.dialect.paramstyle
        self._postgres = engine.dialect.name == "postgresql"
        self._pooled: Any = None  # the pool's proxy, handed back on close

    def close(self) -> None:
        if self._pooled is not None:
            if self._postgres:
                self._pooled.dbapi_connection.autocommit = False  # as the pool hands it out
            self._pooled.close()
            self._pooled = None

    def write(self, fences: dict[str, int], rows: list[dict[str, Any]],
              new_runs: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
        """Create ``new_runs`` and insert the ``rows`` of the runs still ours (per
        ``fences``); returns (runs still ours, runs created)."""
        dbapi = self._connection()
        try:
            if self._postgres:
                return self._write_postgres(dbapi, fences, rows, new_runs)
            return self._write_sqlite(dbapi, fences, rows, new_runs)
        except self._engine.dialect.loaded_dbapi.Error as exc:
            if isinstance(exc, self._engine.dialect.loaded_dbapi.OperationalError):
                self._pooled.invalidate()  # the next batch reconnects
                self._pooled = None
            raise sa.exc.DBAPIError.instance(None, None, exc, self._engine.dialect.loaded_dbapi.Error) from exc

    def _connection(self) -> Any:
        if self._pooled is None:
            self._pooled = self._engine.raw_connection()
            if self._postgres:
                self._pooled.dbapi_connection.autocommit = True
        return self._pooled.dbapi_connection

    def _write_sqlite(self, dbapi: Any, fences: dict[str, int], rows: list[dict[str, Any]],
                      new_runs: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
        dbapi.begin_write()
        try:
            created = store.insert_runs(dbapi, self._paramstyle, new_runs)
            ours = store.fences_ok(dbapi, self._paramstyle, fences)
            store.insert_entries(dbapi, self._paramstyle, [r for r in rows if r["run_id"] in ours])
            dbapi.commit()
        except BaseException:
            dbapi.rollback()
            raise
        return ours, created

    def _write_postgres(self, dbapi: Any, fences: dict[str, int], rows: list[dict[str, Any]],
                        new_runs: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
        # two autocommit statements: each item of a batch concerns one run, so atomicity
        # is needed per run, not across the batch
        created = store.insert_runs(dbapi, self._paramstyle, new_runs)
        if not rows:
            return set(), created
        ids = sorted(fences)  # the same lock order in every worker
        params: list[Any] = [ids, [fences[i] for i in ids]]
        params += [[row.get(c) for row in rows] for c in store.ENTRY_COLUMNS]
        with dbapi.cursor() as cursor:
            cursor.execute(_postgres_sql(), params)
            # every fenced item carries rows: the runs written are the runs still ours
            return {r[0] for r in cursor.fetchall()}, created


@functools.cache
def _postgres_sql() -> str:
    """One statement: share-lock the runs whose fence still matches, insert their rows.
    Arrays (one per column) keep the text the same for any batch size, so the server
    prepares it once."""
    dialect = postgresql.dialect()

    def array(column: sa.Column[Any]) -> str:
        return f"%s::{column.type.compile(dialect=dialect)}[]"

    columns = ", ".join(store.ENTRY_COLUMNS)
    entry_arrays = ", ".join(array(journal.c[c]) for c in store.ENTRY_COLUMNS)
    return (
        f"WITH ours AS (SELECT r.id FROM {runs.name} r "
        f"JOIN unnest({array(runs.c.id)}, {array(runs.c.fence)}) AS f(id, fence) "
        f"ON r.id = f.id AND r.fence = f.fence ORDER BY r.id FOR SHARE OF r) "
        f"INSERT INTO {journal.name} ({columns}) "
        f"SELECT * FROM unnest({entry_arrays}) AS e({columns}) "
        f"WHERE e.run_id IN (SELECT id FROM ours) RETURNING run_id"
    )
