"""Schema migrations: a database made by an earlier chainflow reaches the latest shape,
and the claim query still finds due runs through the (now partial) ready_at index;
processes starting together on a new SQLite file all get it, in WAL mode."""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.chain import chainstore
from chainflow.storage import schema, store
from chainflow.storage.connector import migrate

from ..statements import captured, plan


def _indexes(app: cf.Chainflow) -> dict[str, str]:
    """Index name -> its predicate (WHERE clause text, '' for a full index)."""
    found = sa.inspect(app.engine).get_indexes("cf_runs")
    out = {}
    for ix in found:
        options = ix.get("dialect_options", {})
        where = options.get("sqlite_where", options.get("postgresql_where"))
        out[str(ix["name"])] = "" if where is None else str(where)
    return out


def test_v2_database_gets_partial_indexes(make_app: Any) -> None:
    app = make_app()
    app.ensure_schema()
    with app.engine.begin() as conn:  # back to the v2 shape: full indexes, no v3 row
        conn.exec_driver_sql("DROP INDEX ix_cf_runs_ready_at")
        conn.exec_driver_sql("DROP INDEX ix_cf_runs_parent_id")
        conn.exec_driver_sql("CREATE INDEX ix_cf_runs_ready ON cf_runs (ready_at)")
        conn.exec_driver_sql("CREATE INDEX ix_cf_runs_parent_id ON cf_runs (parent_id)")
        conn.execute(schema.schema_version.delete().where(schema.schema_version.c.version >= 3))
    assert "ix_cf_runs_ready" in _indexes(app)
    assert migrate(app.engine) == schema.LATEST
    indexes = _indexes(app)
    assert "ix_cf_runs_ready" not in indexes
    assert "ready_at IS NOT NULL" in indexes["ix_cf_runs_ready_at"]
    assert "parent_id IS NOT NULL" in indexes["ix_cf_runs_parent_id"]
    assert migrate(app.engine) == schema.LATEST  # nothing left to apply


def test_the_claim_query_searches_the_partial_ready_index(make_app: Any) -> None:
    app = make_app()

    @app.workflow("noop")
    async def noop(ctx: cf.Context, _: int) -> None:
        return None

    app.start("noop", 1)
    # finished runs (the bulk of a real table) are outside the partial index: with their
    # statistics a planner sees what it costs to reach due runs through (status, workflow)
    finished = [{**store.run_row(workflow=("noop", "other")[i % 2], input_text="1", input_hash="", idempotency_key=None,
                                 deadline=None, now=float(i)), "status": "completed", "ready_at": None}
                for i in range(2000)]
    with app.engine.begin() as conn:
        conn.execute(schema.runs.insert(), finished)
        conn.exec_driver_sql("ANALYZE")
    with captured(app) as statements, app.engine.begin() as conn:
        assert len(store.claim(conn, "w", 5, now=1e12, lease=30, workflows=["noop", "other"])) == 1
    found = plan(app, *next(c for c in statements if c[0].lstrip().upper().startswith("UPDATE")))
    assert "ix_cf_runs_ready_at" in found, found


def test_v3_database_gets_recoveries_and_the_workers_table(make_app: Any) -> None:
    app = make_app()
    app.ensure_schema()
    with app.engine.begin() as conn:  # back to the v3 shape, with a run written by v3
        conn.exec_driver_sql("DROP TABLE cf_workers")
        conn.exec_driver_sql("ALTER TABLE cf_runs DROP COLUMN recoveries")
        conn.execute(schema.schema_version.delete().where(schema.schema_version.c.version >= 4))
        v3_run = store.run_row(workflow="old", input_text="1", input_hash="", idempotency_key=None, deadline=None,
                               now=1.0)
        conn.execute(schema.runs.insert(), v3_run)  # the columns given only: those v3 has
    inspector = sa.inspect(app.engine)
    assert "recoveries" not in {c["name"] for c in inspector.get_columns("cf_runs")}
    assert not inspector.has_table("cf_workers")
    assert migrate(app.engine) == schema.LATEST == 12
    inspector = sa.inspect(app.engine)
    assert "recoveries" in {c["name"] for c in inspector.get_columns("cf_runs")}
    assert {c["name"] for c in inspector.get_columns("cf_workers")} == {c.name for c in schema.workers.c}
    with app.engine.begin() as conn:
        assert conn.execute(sa.select(schema.runs.c.recoveries).where(schema.runs.c.id == v3_run["id"])).scalar_one() == 0
        # and the claim (which counts recoveries) works on the migrated table
        (claim,) = store.claim(conn, "w", 5, now=1e12, lease=30, workflows=["old"])
    assert (claim.run_id, claim.recoveries) == (v3_run["id"], 0)
    assert migrate(app.engine) == schema.LATEST  # nothing left to apply


def test_v4_database_gets_the_reservations_table(make_app: Any) -> None:
    """v5: UTXO chains reserve coins per intent; a v4 database (with a submission of an
    account chain in it) gains the table and keeps what it had."""
    app = make_app()
    app.ensure_schema()
    with app.engine.begin() as conn:  # back to the v4 shape
        conn.exec_driver_sql("DROP TABLE cf_reservations")
        conn.execute(schema.schema_version.delete().where(schema.schema_version.c.version >= 5))
        conn.execute(schema.submissions.insert().values(
            chain="evm", sender="0xabc", idempotency_key="k", request="{}", finality="{}", nonce=3,
            state="final", created_at=1.0, updated_at=1.0))
    assert not sa.inspect(app.engine).has_table("cf_reservations")
    assert migrate(app.engine) == schema.LATEST == 12
    inspector = sa.inspect(app.engine)
    assert {c["name"] for c in inspector.get_columns("cf_reservations")} == {c.name for c in schema.reservations.c}
    with app.engine.begin() as conn:
        conn.execute(schema.reservations.insert().values(chain="btc", outpoint="aa:0", submission_id=1, value=5,
                                                         created_at=1.0))
        with pytest.raises(sa.exc.IntegrityError):  # an outpoint is reserved by one intent only
            with conn.begin_nested():
                conn.execute(schema.reservations.insert().values(chain="btc", outpoint="aa:0", submission_id=2,
                                                                 value=5, created_at=1.0))
        assert conn.execute(sa.select(schema.submissions.c.nonce)).scalar_one() == 3
    assert migrate(app.engine) == schema.LATEST  # nothing left to apply


def test_v5_database_gets_batches_stuck_marks_and_recorded_spends(make_app: Any) -> None:
    """v6: a v5 database (a held reservation in it) gains the batch, stuck and spend
    columns; what it had stays, held."""
    app = make_app()
    app.ensure_schema()
    with app.engine.begin() as conn:  # back to the v5 shape
        conn.exec_driver_sql("DROP INDEX ix_cf_submissions_batch")
        conn.exec_driver_sql("DROP INDEX ix_cf_reservations_spent")
        for table, column in (("cf_submissions", "batch_id"), ("cf_submissions", "stuck_since"),
                              ("cf_reservations", "spent_at_block")):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN {column}")
        conn.execute(schema.schema_version.delete().where(schema.schema_version.c.version >= 6))
        conn.exec_driver_sql("INSERT INTO cf_reservations (chain, outpoint, submission_id, value, created_at) "
                             "VALUES ('btc', 'aa:0', 1, 5, 1.0)")
    assert migrate(app.engine) == schema.LATEST == 12
    inspector = sa.inspect(app.engine)
    assert {"batch_id", "stuck_since"} <= {c["name"] for c in inspector.get_columns("cf_submissions")}
    assert {i["name"] for i in inspector.get_indexes("cf_reservations")} >= {"ix_cf_reservations_spent"}
    with app.engine.begin() as conn:
        row = conn.execute(sa.select(schema.reservations)).one()
    assert (row.outpoint, row.spent_at_block) == ("aa:0", None)
    assert migrate(app.engine) == schema.LATEST  # nothing left to apply


def test_v6_database_gets_the_overrides_column(make_app: Any) -> None:
    """v7: a fork carries the code it runs (``cf_runs.overrides``); a v6 database (with
    a run in it) gains the column, and its runs are claimed as before."""
    app = make_app()
    app.ensure_schema()
    with app.engine.begin() as conn:  # back to the v6 shape, with a run written by v6
        conn.exec_driver_sql("ALTER TABLE cf_runs DROP COLUMN overrides")
        conn.execute(schema.schema_version.delete().where(schema.schema_version.c.version >= 7))
        v6_run = store.run_row(workflow="old", input_text="1", input_hash="", idempotency_key=None, deadline=None,
                               now=1.0)
        conn.execute(schema.runs.insert(), v6_run)
    assert "overrides" not in {c["name"] for c in sa.inspect(app.engine).get_columns("cf_runs")}
    assert migrate(app.engine) == schema.LATEST == 12
    assert "overrides" in {c["name"] for c in sa.inspect(app.engine).get_columns("cf_runs")}
    with app.engine.begin() as conn:
        (claim,) = store.claim(conn, "w", 5, now=1e12, lease=30, workflows=["old"])
    assert (claim.run_id, claim.parent_id, claim.overrides) == (v6_run["id"], None, None)
    assert migrate(app.engine) == schema.LATEST  # nothing left to apply


def test_v7_database_gets_child_slots_and_the_schedules_table(make_app: Any) -> None:
    """v8: child runs name their slot in the parent, schedules keep their state; a v7
    database (with a fork in it) gains both, and the fork stays a fork."""
    app = make_app()
    app.ensure_schema()
    with app.engine.begin() as conn:  # back to the v7 shape, with a fork written by v7
        conn.exec_driver_sql("DROP TABLE cf_schedules")
        conn.exec_driver_sql("ALTER TABLE cf_runs DROP COLUMN parent_slot")
        conn.execute(schema.schema_version.delete().where(schema.schema_version.c.version >= 8))
        fork = store.run_row(workflow="old", input_text="1", input_hash="", idempotency_key=None, deadline=None,
                             now=1.0)
        conn.execute(schema.runs.insert(), {**fork, "parent_id": "source"})
    assert not sa.inspect(app.engine).has_table("cf_schedules")
    assert migrate(app.engine) == schema.LATEST == 12
    inspector = sa.inspect(app.engine)
    assert "parent_slot" in {c["name"] for c in inspector.get_columns("cf_runs")}
    assert {c["name"] for c in inspector.get_columns("cf_schedules")} == {c.name for c in schema.schedules.c}
    with app.engine.begin() as conn:
        assert store.forked(conn, ["source"]) == {"source"}
        (claim,) = store.claim(conn, "w", 5, now=1e12, lease=30, workflows=["old"])
    assert (claim.run_id, claim.parent_id, claim.parent_slot) == (fork["id"], "source", None)
    assert migrate(app.engine) == schema.LATEST  # nothing left to apply


def _submissions_of_one_sender(app: cf.Chainflow, n: int) -> None:
    with app.engine.begin() as conn:
        conn.execute(schema.submissions.insert(), [
            dict(chain="evm", sender="0xabc", idempotency_key=f"k{i}", request="{}", finality="{}", nonce=i,
                 state="final", created_at=1.0, updated_at=1.0) for i in range(n)])


def test_a_new_intent_is_looked_up_by_its_key_before_any_analyze(make_app: Any) -> None:
    """Found by profiling the on-chain benchmark on Postgres: with no statistics yet (a
    new database, or a table grown since its last ANALYZE), the lookup that opens each
    intent went through the (chain, sender, nonce) index and read every submission of
    the sender: 2.7 ms at 1,000, a quarter of the worker's loop.  The opening is one
    statement on both backends (on Postgres a find-or-create)."""
    app = make_app()
    app.ensure_schema()
    _submissions_of_one_sender(app, 2000)
    with captured(app) as statements, app.engine.begin() as conn:
        found_row = chainstore.intent(conn, chain="evm", sender="0xabc", key="k1999", run_id=None, step="s",
                                      request="{}", finality="{}", now=2.0)
    assert found_row.idempotency_key == "k1999" and found_row.created_at == 1.0
    (statement,) = statements
    found = plan(app, *statement)
    scans = [line for line in found.splitlines() if "cf_submissions" in line and
             any(word in line for word in ("Scan", "SCAN", "SEARCH"))]
    assert scans and all("uq_cf_submission_key" in line or "sqlite_autoindex_cf_submissions" in line
                         for line in scans), found


def test_v9_database_gets_the_submission_indexes_by_state_first(make_app: Any) -> None:
    app = make_app()
    app.ensure_schema()
    _submissions_of_one_sender(app, 3)
    with app.engine.begin() as conn:  # back to the v9 shape
        for name, columns in (("state", "chain, state"), ("nonce", "chain, sender, nonce"),
                              ("stuck", "chain, state, last_broadcast_block")):
            conn.exec_driver_sql(f"DROP INDEX ix_cf_submissions_{name}")
            conn.exec_driver_sql(f"CREATE INDEX ix_cf_submissions_{name} ON cf_submissions ({columns})")
        conn.execute(schema.schema_version.delete().where(schema.schema_version.c.version >= 10))
    assert migrate(app.engine) == schema.LATEST == 12
    indexes = {str(i["name"]): i for i in sa.inspect(app.engine).get_indexes("cf_submissions")}
    assert indexes["ix_cf_submissions_state"]["column_names"] == ["state", "chain"]
    assert indexes["ix_cf_submissions_stuck"]["column_names"] == ["state", "chain", "last_broadcast_block"]
    options = indexes["ix_cf_submissions_nonce"].get("dialect_options", {})
    assert "nonce IS NOT NULL" in str(options.get("sqlite_where", options.get("postgresql_where")))
    with app.engine.begin() as conn:
        assert [r.nonce for r in chainstore.nonces_in_use(conn, "evm", "0xabc")] == [0, 1, 2]
    assert migrate(app.engine) == schema.LATEST  # nothing left to apply


def test_v10_database_gets_the_sharers_table(make_app: Any) -> None:
    """v11: runs sharing another run's intent are recorded; a v10 database (with an
    intent in it) gains the table, and the intent reads as shared by nobody."""
    app = make_app()
    app.ensure_schema()
    with app.engine.begin() as conn:  # back to the v10 shape
        conn.exec_driver_sql("DROP TABLE cf_sharers")
        conn.execute(schema.schema_version.delete().where(schema.schema_version.c.version >= 11))
        sub_id = conn.execute(schema.submissions.insert().values(
            chain="btc", sender="w", idempotency_key="k", request="{}", finality="{}", state="queued",
            created_at=1.0, updated_at=1.0)).inserted_primary_key[0]
    assert not sa.inspect(app.engine).has_table("cf_sharers")
    assert migrate(app.engine) == schema.LATEST == 12
    assert {c["name"] for c in sa.inspect(app.engine).get_columns("cf_sharers")} == {c.name for c in schema.sharers.c}
    with app.engine.begin() as conn:
        assert chainstore.sharers_of(conn, [sub_id]) == []
        chainstore.share(conn, sub_id, "r2", "\x1fpay", 2.0)
        chainstore.share(conn, sub_id, "r2", "\x1fpay", 3.0)  # once is enough
        assert [tuple(r) for r in chainstore.sharers_of(conn, [sub_id])] == [(sub_id, "r2", "\x1fpay")]
    assert migrate(app.engine) == schema.LATEST  # nothing left to apply


def test_v11_database_gets_the_releases_table(make_app: Any) -> None:
    """v12: runs giving up a payment on the wire are recorded; a v11 database gains the
    table, and an intent in it reads as given up by nobody."""
    app = make_app()
    app.ensure_schema()
    with app.engine.begin() as conn:  # back to the v11 shape
        conn.exec_driver_sql("DROP TABLE cf_releases")
        conn.execute(schema.schema_version.delete().where(schema.schema_version.c.version >= 12))
    assert not sa.inspect(app.engine).has_table("cf_releases")
    assert migrate(app.engine) == schema.LATEST == 12
    assert {c["name"] for c in sa.inspect(app.engine).get_columns("cf_releases")} == \
        {c.name for c in schema.releases.c}
    with app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.releases)).scalar() == 0
    assert migrate(app.engine) == schema.LATEST  # nothing left to apply


def _start_on(url: str, barrier: Any, outcomes: Any) -> None:
    app = cf.Chainflow(url)
    barrier.wait()
    try:
        app.ensure_schema()
        outcomes.put("started")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        outcomes.put(f"{type(exc).__name__}: {exc}")


def test_processes_starting_together_on_a_new_sqlite_file_all_start(tmp_path: Any) -> None:
    """Each process switches the new file to WAL; SQLite refuses one of two concurrent
    switches at once instead of waiting ("database is locked" in about one start of ten
    before the fix): the refused one waits and asks again."""
    fork = multiprocessing.get_context("fork")
    for round_ in range(40):
        url = f"sqlite:///{tmp_path}/new{round_}.db"
        barrier, outcomes = fork.Barrier(3), fork.Queue()
        processes = [fork.Process(target=_start_on, args=(url, barrier, outcomes)) for _ in range(3)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(30)
        assert [outcomes.get(timeout=5) for _ in processes] == ["started"] * 3, f"round {round_}"
        with sa.create_engine(url).connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
