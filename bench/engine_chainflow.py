"""The chainflow side of the engine benchmark, kept in one small function (``run``).

Same workload as the peers: a workflow of K no-op steps, N runs, on a fresh database.
Timed region: the N starts through the last run's completion; creating the schema and
starting the worker happen before it.

Steps (``"steps"`` in the spec):

async  ``ctx.step`` on an ``async def`` no-op, run on the worker's loop like any async
       step: the engine's own cost, as the floor and DBOS's direct call (whose sync
       steps run in the caller's thread) pay no thread hand-off either
sync   ``ctx.step`` on a plain ``def`` no-op, which the engine runs in a thread (a
       sync step may block): adds two thread wake-ups per step

sequential    one worker (concurrency=1); start a run, await its result, next
32 in flight  one worker with concurrency=32; 32 clients each start a run and await it
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


async def noop_async(i: int) -> int:
    return i


def _sqlalchemy_url(backend: str, db: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{os.path.join(db, 'chainflow.db')}"
    return db.replace("postgresql://", "postgresql+psycopg://", 1)


def run(spec: dict[str, Any]) -> dict[str, Any]:
    import chainflow as cf

    backend, n, k, mode, width = spec["backend"], spec["n"], spec["k"], spec["mode"], spec["concurrency"]
    app = cf.Chainflow(_sqlalchemy_url(backend, spec["db"]))
    steps = spec.get("steps", "async")
    step_fn = {"async": noop_async, "sync": noop}[steps]

    @app.workflow("bench")
    async def wf(ctx: cf.Context, k: int) -> int:
        for i in range(k):
            await ctx.step("s", step_fn, i)
        return k

    app.ensure_schema()

    async def main() -> tuple[float, float, list[str]]:
        # a worker in this process, as DBOS executes workflows in the process that starts
        # them; each client starts a run and awaits its result, like a DBOS handle
        stop = asyncio.Event()
        width_used = 1 if mode == "sequential" else width
        worker = asyncio.create_task(app.worker(concurrency=width_used, track=False).run(stop))
        await asyncio.sleep(0.2)
        ids: list[str] = []
        slots = asyncio.Semaphore(width_used)

        async def one() -> None:
            async with slots:
                handle = await app.astart("bench", k)
                ids.append(handle.id)
                await app.await_run(handle.id)

        cpu0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        stop.set()
        await worker
        return elapsed, cpu, ids

    elapsed, cpu, _ids = asyncio.run(main())
    done = [r for r in app.runs(status="completed", workflow="bench", limit=n + 1) if r.output == k]
    if len(done) != n:
        raise AssertionError(f"chainflow completed {len(done)} of {n} runs")
    app.engine.dispose()
    note = f"{steps} steps, worker concurrency={1 if mode == 'sequential' else width}"
    return {"elapsed": elapsed, "cpu": cpu, "note": note}
