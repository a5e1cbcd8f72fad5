"""The DBOS Transact peer: the same workload as a DBOS workflow of K ``@DBOS.step()``s.

Configuration (dbos 3.x): ``DBOS(config={"name": ..., "system_database_url": url})``,
``DBOS.launch()`` before timing, ``DBOS.destroy()`` after.  Postgres is reached over
127.0.0.1 with DBOS's default engine (pool of 20, psycopg 3).

SQLite journal (``"dbos_journal"`` in the spec; the ``dbos_wal`` peer sets ``"wal"``).
DBOS 3.4 has no journal-mode setting: its SQLite engine's connect hook sets only
``isolation_level = "IMMEDIATE"``, ``busy_timeout`` and ``foreign_keys``, so by default
SQLite's own defaults apply (rollback journal, ``synchronous=FULL``).  WAL is what a DBOS
user would pick for speed, so the ``wal`` variant adds a SQLAlchemy ``connect`` listener
(on the ``Engine`` class, as DBOS creates its engine itself; a custom
``system_database_engine`` would lose DBOS's own hook) that runs ``PRAGMA
journal_mode=WAL`` and ``PRAGMA synchronous=FULL`` on each new connection: the same
durability as chainflow's default and the floor (every commit fsyncs the WAL).  Either
way the listener reads back what every DBOS connection runs with; the repetition's note
records it and the ``wal`` variant fails unless every connection was WAL + FULL.

Variants (``"dbos_variant"`` in the spec).  Defaults: ``call`` and ``handles``, the
idiomatic ones; on this 2-core machine all three 32-in-flight variants measured within
the run-to-run noise of each other (DBOS is CPU-bound here: ~2 commits and ~2.5 ms of
Python per step), ``handles`` being best or tied in most runs:

sequential
    ``call``    call the (sync) workflow function directly: runs in the caller's thread
    ``handle``  ``DBOS.start_workflow(wf, k).get_result()``
    ``async``   ``await wf_async(k)`` with async steps
32 in flight
    ``threads`` 32 threads, each calling the sync workflow directly, one run after another
    ``handles`` ``DBOS.start_workflow`` keeping a window of 32 handles open
    ``async``   async workflow + async steps, ``asyncio.gather`` under a semaphore of 32
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from collections import deque
from typing import Any

NAME = "dbos"
DEFAULT_VARIANT = {"sequential": "call", "inflight": "handles"}


def available() -> str | None:
    if importlib.util.find_spec("dbos") is None:
        return "not available: dbos not installed (pip install 'chainflow[bench]')"
    return None


def _workflows() -> dict[str, Any]:
    from dbos import DBOS

    @DBOS.step()
    def noop(i: int) -> int:
        return i

    @DBOS.workflow(name="bench_sync")
    def wf_sync(k: int) -> int:
        for i in range(k):
            noop(i)
        return k

    @DBOS.step()
    async def noop_async(i: int) -> int:
        return i

    @DBOS.workflow(name="bench_async")
    async def wf_async(k: int) -> int:
        for i in range(k):
            await noop_async(i)
        return k

    return {"sync": wf_sync, "async": wf_async}


def _sequential(variant: str, wfs: dict[str, Any], n: int, k: int) -> list[int]:
    from dbos import DBOS

    if variant == "call":
        return [wfs["sync"](k) for _ in range(n)]
    if variant == "handle":
        return [DBOS.start_workflow(wfs["sync"], k).get_result() for _ in range(n)]
    if variant == "async":
        async def main() -> list[int]:
            return [await wfs["async"](k) for _ in range(n)]

        return asyncio.run(main())
    raise ValueError(f"unknown sequential variant {variant!r}")


def _inflight(variant: str, wfs: dict[str, Any], n: int, k: int, width: int) -> list[int]:
    from dbos import DBOS

    if variant == "threads":
        results: list[int] = []
        lock = threading.Lock()
        todo = iter(range(n))
        errors: list[BaseException] = []

        def drive() -> None:
            try:
                while True:
                    with lock:
                        if next(todo, None) is None:
                            return
                    r = wfs["sync"](k)
                    with lock:
                        results.append(r)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=drive) for _ in range(width)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results
    if variant == "handles":
        out: list[int] = []
        window: deque[Any] = deque()
        for _ in range(n):
            if len(window) >= width:
                out.append(window.popleft().get_result())
            window.append(DBOS.start_workflow(wfs["sync"], k))
        out.extend(h.get_result() for h in window)
        return out
    if variant == "async":
        async def main() -> list[int]:
            sem = asyncio.Semaphore(width)

            async def one() -> int:
                async with sem:
                    return await wfs["async"](k)

            return list(await asyncio.gather(*(one() for _ in range(n))))

        return asyncio.run(main())
    raise ValueError(f"unknown 32-in-flight variant {variant!r}")


SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}  # PRAGMA synchronous's numbers
JOURNAL_MODES = ("delete", "truncate", "persist", "memory", "wal", "off")


def _watch_sqlite(journal: str | None) -> set[tuple[str, str]]:
    """Listen to every SQLite connection opened from now on in this process (only DBOS's,
    in a benchmark child): with ``journal`` set, switch it to that journal mode with
    synchronous=FULL; either way add its (journal_mode, synchronous) to the returned set."""
    import sqlite3

    import sqlalchemy as sa

    seen: set[tuple[str, str]] = set()

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        if not isinstance(dbapi_conn, sqlite3.Connection):
            return
        if journal:
            dbapi_conn.execute(f"PRAGMA journal_mode={journal}")
            dbapi_conn.execute("PRAGMA synchronous=FULL")
        mode = dbapi_conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = dbapi_conn.execute("PRAGMA synchronous").fetchone()[0]
        seen.add((str(mode).lower(), SYNCHRONOUS.get(sync, str(sync))))

    sa.event.listen(sa.Engine, "connect", on_connect)
    return seen


def _count_rows(backend: str, db: str) -> tuple[int, int]:
    """(workflows, step outputs) recorded in the system database after the run."""
    if backend == "sqlite":
        import sqlite3

        conn = sqlite3.connect(os.path.join(db, "dbos.sqlite"))
        try:
            wf = conn.execute("SELECT count(*) FROM workflow_status").fetchone()[0]
            st = conn.execute("SELECT count(*) FROM operation_outputs").fetchone()[0]
        finally:
            conn.close()
        return wf, st
    import psycopg

    with psycopg.connect(db) as pg:
        wf = pg.execute("SELECT count(*) FROM dbos.workflow_status").fetchone()[0]  # type: ignore[index]
        st = pg.execute("SELECT count(*) FROM dbos.operation_outputs").fetchone()[0]  # type: ignore[index]
    return wf, st


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from dbos import DBOS, DBOSConfig

    backend, n, k, mode = spec["backend"], spec["n"], spec["k"], spec["mode"]
    variant = spec.get("dbos_variant") or DEFAULT_VARIANT[mode]
    url = f"sqlite:///{os.path.join(spec['db'], 'dbos.sqlite')}" if backend == "sqlite" else spec["db"]
    journal = spec.get("dbos_journal")
    if journal is not None and journal not in JOURNAL_MODES:
        raise ValueError(f"dbos_journal={journal!r}: use one of {', '.join(JOURNAL_MODES)}")
    if journal and backend != "sqlite":
        raise ValueError(f"dbos_journal={journal!r} is a SQLite setting; backend is {backend!r}")
    connections = _watch_sqlite(journal)
    wfs = _workflows()
    config: DBOSConfig = {"name": "chainflow-bench", "system_database_url": url, "log_level": "WARNING"}
    DBOS(config=config)
    DBOS.launch()
    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        if mode == "sequential":
            results = _sequential(variant, wfs, n, k)
        else:
            results = _inflight(variant, wfs, n, k, spec["concurrency"])
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        DBOS.destroy(destroy_registry=True)
    if len(results) != n or any(r != k for r in results):
        raise AssertionError(f"DBOS returned {len(results)} results, expected {n} x {k}")
    workflows, steps = _count_rows(backend, spec["db"])
    if workflows != n or steps < n * k:
        raise AssertionError(f"DBOS recorded {workflows} workflows / {steps} steps, expected {n} / {n * k}")
    if journal and connections != {(journal, "FULL")}:
        raise AssertionError(f"DBOS's SQLite connections ran with {sorted(connections)}, expected {journal} + FULL")
    settings = "; ".join(f"journal_mode={jm}, synchronous={sync}" for jm, sync in sorted(connections))
    return {"elapsed": elapsed, "cpu": cpu, "note": f"{variant}, {settings}" if settings else variant}
