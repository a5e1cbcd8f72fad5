"""The chainflow side of the engine benchmark, kept in one small function (``run``).

Same workload as the peers: a workflow of K no-op steps (``ctx.step`` on a plain sync
function), N runs, on a fresh database.  Timed region: the N starts through the last
run's completion; creating the schema and starting the worker happen before it.

sequential    one worker (concurrency=1); start a run, drain it to completion, next
32 in flight  one worker with concurrency=32; all N runs started, then drained
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from typing import Any

NAME = "chainflow"


def available() -> str | None:
    if importlib.util.find_spec("chainflow") is None:
        return "not available: chainflow not importable"
    return None


def noop(i: int) -> int:
    return i


def _sqlalchemy_url(backend: str, db: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{os.path.join(db, 'chainflow.db')}"
    return db.replace("postgresql://", "postgresql+psycopg://", 1)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import chainflow as cf

    backend, n, k, mode, width = spec["backend"], spec["n"], spec["k"], spec["mode"], spec["concurrency"]
    app = cf.Chainflow(_sqlalchemy_url(backend, spec["db"]))

    @app.workflow("bench")
    async def wf(ctx: cf.Context, k: int) -> int:
        for i in range(k):
            await ctx.step("s", noop, i)
        return k

    app.ensure_schema()

    async def main() -> tuple[float, float, list[str]]:
        worker = app.worker(concurrency=1 if mode == "sequential" else width, track=False)
        await worker.start()
        try:
            ids: list[str] = []
            cpu0, t0 = time.process_time(), time.perf_counter()
            if mode == "sequential":
                for _ in range(n):
                    ids.append((await app.astart("bench", k)).id)
                    await worker.drain()
            else:
                for _ in range(n):
                    ids.append((await app.astart("bench", k)).id)
                await worker.drain()
            return time.perf_counter() - t0, time.process_time() - cpu0, ids
        finally:
            await worker.close()

    elapsed, cpu, _ids = asyncio.run(main())
    done = [r for r in app.runs(status="completed", workflow="bench", limit=n + 1) if r.output == k]
    if len(done) != n:
        raise AssertionError(f"chainflow completed {len(done)} of {n} runs")
    app.engine.dispose()
    return {"elapsed": elapsed, "cpu": cpu, "note": f"worker concurrency={1 if mode == 'sequential' else width}"}
