"""The SQL an app runs, for tests that EXPLAIN it or count it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

import chainflow as cf


@contextmanager
def captured(app: cf.Chainflow, *, kind: str = "") -> Iterator[list[tuple[str, Any]]]:
    """The statements (and parameters) the app's engine runs meanwhile; ``kind``: only
    those starting with that keyword (``"SELECT"``)."""
    found: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(kind):
            found.append((statement, parameters))

    sa.event.listen(app.engine, "before_cursor_execute", capture)
    try:
        yield found
    finally:
        sa.event.remove(app.engine, "before_cursor_execute", capture)


def plan(app: cf.Chainflow, statement: str, parameters: Any, *, avoid: tuple[str, ...] = ("seqscan",)) -> str:
    """The plan of a captured statement, one line per node.  On Postgres the planner is
    told to avoid ``avoid`` (``enable_<name> = off``): the tables of a test are tiny,
    and without it the planner rightly scans them (or sorts a few rows); with it, it
    still must when no index path exists."""
    raw = app.engine.raw_connection()
    try:
        cursor = raw.cursor()
        if app.engine.dialect.name == "sqlite":
            cursor.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
        else:
            for name in avoid:
                cursor.execute(f"SET enable_{name} = off")
            cursor.execute(f"EXPLAIN {statement}", parameters)
        return "\n".join(str(row[-1]) for row in cursor.fetchall())
    finally:
        raw.rollback()
        raw.close()
