"""The dashboard's pages read through indexes: every statement the runs page (each
filter, a deep cursor), a run's page and the charts run is EXPLAINed on SQLite and
Postgres, and none scans a whole table of runs, journal, attempts or submissions (nor
sorts the runs page).  A planner would rightly scan a tiny table, so the tables get a
few thousand rows and statistics, and Postgres is told to avoid the scans and sorts it
can avoid."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.storage import codec, schema, store
from chainflow.storage.connector import migrate
from chainflow.ui import reads

from ..statements import captured, plan

BIG_TABLES = ("cf_runs", "cf_journal", "cf_attempts", "cf_submissions")


def seed(app: cf.Chainflow, n: int = 3000) -> list[str]:
    now = time.time()
    rows, entries = [], []
    for i in range(n):
        row = store.run_row(workflow=f"wf{i % 5}", input_text=codec.dumps(i), input_hash="", idempotency_key=f"k{i}",
                            deadline=None, now=now - n + i)
        row.update(status=("completed", "failed", "waiting")[i % 3], ready_at=None)
        rows.append(row)
        entries += [dict(run_id=row["id"], branch="", position=p, key=f"s{p}", kind="step", status="ok",
                         output="1", error=None, attempts=1, started_at=now, finished_at=now + 0.1) for p in range(3)]
    with app.engine.begin() as conn:
        conn.execute(schema.runs.insert(), rows)
        conn.execute(schema.journal.insert(), entries)
        conn.exec_driver_sql("ANALYZE")
    return [r["id"] for r in rows]


def full_scans(text: str) -> list[str]:
    """Lines of a plan that read a whole big table (an index-ordered scan that a LIMIT
    stops is not one)."""
    found = []
    for table in BIG_TABLES:
        found += re.findall(rf"^.*SCAN {table}(?! USING).*$", text, re.M)  # SQLite
        found += re.findall(rf"^.*Seq Scan on {table}\b.*$", text, re.M)  # Postgres
    return found


def check(app: cf.Chainflow, statements: list[tuple[str, Any]], *, no_sort: bool = False) -> list[str]:
    plans = []
    for statement, parameters in statements:
        text = plan(app, statement, parameters, avoid=("seqscan", "sort"))
        assert not full_scans(text), f"{statement}\n{text}"
        if no_sort and "cf_runs" in statement and "ORDER BY" in statement:
            assert "TEMP B-TREE FOR ORDER BY" not in text and not re.search(r"^\s*(->\s*)?Sort\b", text, re.M), \
                f"{statement}\n{text}"
        plans.append(text)
    return plans


@pytest.mark.parametrize("filters", [
    {}, {"status": "failed"}, {"workflow": "wf3"}, {"status": "waiting", "workflow": "wf1"},
    {"since": 1.0, "until": 4e9},
], ids=["newest", "status", "workflow", "both", "range"])
def test_the_runs_page_is_an_index_range_at_any_depth(make_app: Callable[..., Any], filters: dict[str, Any]) -> None:
    app = make_app()
    app.ensure_schema()
    seed(app)
    first = reads.runs_page(app, before=None, limit=50, **{"status": None, "workflow": None, "since": None,
                                                            "until": None, **filters})
    assert len(first.runs) == 50 and first.next_cursor
    deep = app.runs(limit=1, **filters)[0]
    with captured(app, kind="SELECT") as statements:
        page = reads.runs_page(app, before=(deep.created_at - 1500, "ffffffff-ffff-4fff-bfff-ffffffffffff"), limit=50,
                               **{"status": None, "workflow": None, "since": None, "until": None, **filters})
    assert page.runs and all(r.created_at <= deep.created_at - 1500 for r in page.runs)
    plans = check(app, [s for s in statements if "cf_runs" in s[0]], no_sort=True)
    assert any("ix_cf_runs_" in p for p in plans), plans


def test_a_run_page_and_the_charts_read_through_indexes(make_app: Callable[..., Any]) -> None:
    app = make_app()
    app.ensure_schema()
    ids = seed(app)
    with captured(app, kind="SELECT") as statements:
        page = reads.run_page(app, ids[1234])
        reads.charts(app, window=3600, width=60, now=time.time())
    assert [r.entry.key for r in page.rows if r.entry] == ["s0", "s1", "s2"]
    touched = [s for s in statements if any(t in s[0] for t in BIG_TABLES)]
    assert {t for t in BIG_TABLES if any(t in s[0] for s in touched)} == set(BIG_TABLES)
    check(app, touched)


def test_a_v8_database_gets_the_dashboard_indexes(make_app: Callable[..., Any]) -> None:
    app = make_app()
    app.ensure_schema()
    with app.engine.begin() as conn:
        for name in schema._V9_INDEXES:
            conn.exec_driver_sql(f"DROP INDEX {name}")
        conn.exec_driver_sql("CREATE INDEX ix_cf_runs_status_workflow ON cf_runs (status, workflow)")  # v1's
        conn.execute(schema.schema_version.delete().where(schema.schema_version.c.version >= 9))
    assert migrate(app.engine) == schema.LATEST == 12
    inspector = sa.inspect(app.engine)
    names = {i["name"] for t in ("cf_runs", "cf_submissions") for i in inspector.get_indexes(t)}
    assert set(schema._V9_INDEXES) <= names
    (widened,) = [i for i in inspector.get_indexes("cf_runs") if i["name"] == "ix_cf_runs_status_workflow"]
    assert widened["column_names"] == ["status", "workflow", "created_at", "id"]
