"""The floor: a hand-written loop paying exactly one durable commit per step.

No engine, no serialization, no bookkeeping: ``INSERT`` one row, ``COMMIT``, repeat.
An engine that journals each step durably on its own transaction cannot beat this on
the same database; one that batches several runs' steps into one commit (group
commit) can.

* SQLite: stdlib ``sqlite3``, ``journal_mode=WAL``, ``synchronous=FULL`` (each commit
  fsyncs the WAL), one connection.
* Postgres: psycopg 3, ``synchronous_commit=on`` (each commit waits for the WAL flush).

"32 in flight":
* Postgres: 32 threads, each with its own connection, each running whole workflows
  (K INSERT+COMMITs) taken from a shared counter.  Concurrent commits on Postgres are
  flushed together by the server's WAL writer, so this is the honest floor for 32
  concurrent durable writers and what a peer using 32 connections competes with.
* SQLite: the sequential loop.  SQLite has a single writer and no group commit: 32
  threads would serialize on the write lock and each still pay its own fsync, plus
  lock hand-off (``--only floor`` with spec ``"floor_variant": "threads"`` measures it).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

NAME = "floor"


def available() -> str | None:
    return None


def _sqlite_connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=60000")
    return conn


def _create_table(conn: Any) -> None:
    conn.execute("CREATE TABLE steps (run INTEGER NOT NULL, step INTEGER NOT NULL, output TEXT NOT NULL, "
                 "PRIMARY KEY (run, step))")
    conn.commit()  # a no-op on the autocommit sqlite3 connection
    conn.close()


def _sqlite_workflow(conn: sqlite3.Connection, run: int, k: int) -> None:
    for step in range(k):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO steps (run, step, output) VALUES (?, ?, ?)", (run, step, str(step)))
        conn.execute("COMMIT")


def _pg_connect(url: str) -> Any:
    import psycopg

    conn = psycopg.connect(url)
    conn.execute("SET synchronous_commit = on")
    conn.commit()
    return conn




def _pg_workflow(conn: Any, run: int, k: int) -> None:
    for step in range(k):
        conn.execute("INSERT INTO steps (run, step, output) VALUES (%s, %s, %s)", (run, step, str(step)))
        conn.commit()


def run(spec: dict[str, Any]) -> dict[str, Any]:
    backend, n, k = spec["backend"], spec["n"], spec["k"]
    connect: Callable[[str], Any]
    workflow: Callable[[Any, int, int], None]
    if backend == "sqlite":
        target = os.path.join(spec["db"], "floor.db")
        connect, workflow = _sqlite_connect, _sqlite_workflow
    else:
        target = spec["db"]
        connect, workflow = _pg_connect, _pg_workflow
    _create_table(connect(target))

    variant = spec.get("floor_variant")
    if variant is None:
        variant = "threads" if (spec["mode"] == "inflight" and backend == "postgres") else "loop"
    threads = spec["concurrency"] if variant == "threads" else 1

    conns = [connect(target) for _ in range(threads)]
    counter = iter(range(n))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def drive(conn: Any) -> None:
        try:
            while True:
                with lock:
                    run_no = next(counter, None)
                if run_no is None:
                    return
                workflow(conn, run_no, k)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    cpu0, t0 = time.process_time(), time.perf_counter()
    if threads == 1:
        drive(conns[0])
    else:
        workers = [threading.Thread(target=drive, args=(c,)) for c in conns]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    for c in conns:
        c.close()
    if errors:
        raise errors[0]
    return {"elapsed": elapsed, "cpu": cpu, "note": f"{variant}, {threads} connection(s)"}
