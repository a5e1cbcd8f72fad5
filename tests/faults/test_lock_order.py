"""Lock order (Postgres): heartbeats, group commits and signal batches over overlapping
runs, at once, for a few seconds, never deadlock.  ``deadlock_timeout`` is lowered to 10 ms so that a
circle of waits is detected (and reported) almost as soon as it forms."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import chainflow as cf
from chainflow.storage import store
from chainflow.storage.entrywriter import EntryWriter
from chainflow.storage.schema import runs

RUNS, SECONDS, PER_KIND = 48, 4.0, 3
OWNER = "w"


def _run_rows() -> list[dict[str, Any]]:
    """Runs held by ``OWNER`` (fence 1), inserted in random id order: the table's
    physical order is not its id order."""
    now = time.time()
    return [store.run_row(workflow="w", input_text="0", input_hash="h", idempotency_key=None, deadline=None,
                          now=now, lease_owner=OWNER, lease_until=now + 60) for _ in range(RUNS)]


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_heartbeats_commits_and_signals_over_overlapping_runs_never_deadlock(pg_url: str) -> None:
    name = make_url(pg_url).database
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET deadlock_timeout = '10ms'")
    admin.dispose()
    app = cf.Chainflow(pg_url)
    app.ensure_schema()
    rows = _run_rows()
    with app.engine.begin() as conn:
        conn.execute(runs.insert(), rows)
    fences = {r["id"]: 1 for r in rows}
    ids = list(fences)
    stop = time.monotonic() + SECONDS
    errors: list[BaseException] = []
    done = {"beats": 0, "batches": 0, "fenced": 0, "signals": 0}

    def some(rng: random.Random) -> list[str]:
        return rng.sample(ids, rng.randint(RUNS // 2, RUNS))  # overlapping, in no particular order

    def heartbeats(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            with app.engine.begin() as conn:
                store.heartbeat(conn, OWNER, {i: 1 for i in some(rng)}, time.time(), 60)
            done["beats"] += 1

    def batches(seed: int) -> None:
        """The group commit's one statement (share-locks every run still ours)."""
        rng = random.Random(seed)
        writer = EntryWriter(app.engine)
        try:
            while time.monotonic() < stop:
                ours, _, _ = writer.write({i: 1 for i in some(rng)}, [], [], [])
                assert ours
                done["batches"] += 1
        finally:
            writer.close()

    def fenced(seed: int) -> None:
        """A batch with closures: the fence read, then more work in the transaction."""
        rng = random.Random(seed)
        while time.monotonic() < stop:
            with app.engine.begin() as conn:
                dbapi = conn.connection.dbapi_connection
                store.fences_ok(dbapi, app.engine.dialect.paramstyle, {i: 1 for i in some(rng)})
                time.sleep(0.001)
            done["fenced"] += 1

    def signals(seed: int) -> None:
        """A tracker's head: one signal per finalised submission (``insert_signals``)."""
        rng = random.Random(seed)
        while time.monotonic() < stop:
            with app.engine.begin() as conn:
                store.insert_signals(conn, [(i, "final", "null") for i in some(rng)], time.time())
            done["signals"] += 1

    def guarded(fn: Any, seed: int) -> None:
        try:
            fn(seed)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(fn, seed))
               for seed, fn in enumerate([heartbeats, batches, fenced, signals] * PER_KIND)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(SECONDS + 30)
    finally:
        app.engine.dispose()
    deadlocks = [e for e in errors if "deadlock" in str(e).lower()]
    assert not deadlocks, f"{len(deadlocks)} deadlocks ({done}): {str(deadlocks[0])[:400]}"
    assert not errors, errors[:3]
    assert min(done.values()) > 10, done
