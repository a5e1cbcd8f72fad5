"""Benchmark 4, memory: RSS of a worker holding 10,000 parked runs.

Half the runs sleep for an hour, half wait for a signal that never comes. A parked run
must cost a database row, not a Python coroutine, so the worker's resident memory
should not grow with the number of parked runs. Each repetition is a fresh process
and a fresh SQLite database; RSS is read from /proc after every run has parked.
Target: ≤ 200 MB.
"""

from __future__ import annotations

import asyncio
import gc
import os
import tempfile
import time
from typing import Any

from .harness import Options, environment, environment_markdown, sized_figures

TITLE = "memory: RSS of a worker holding parked runs (MB, lower is better)"
SIZES = [1_000, 10_000]
QUICK_SIZES = [200]


def available() -> str | None:
    return None if os.path.exists("/proc/self/statm") else "not available: needs /proc"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import sqlalchemy as sa

    import chainflow as cf
    from chainflow.storage.schema import runs

    n = spec["runs"]
    app = cf.Chainflow(f"sqlite:///{os.path.join(tempfile.mkdtemp(), 'memory.db')}")

    @app.workflow("parked")
    async def parked(ctx: cf.Context, i: int) -> None:
        await ctx.step("prepare", lambda: i)
        if i % 2:
            await ctx.sleep("cool-off", 3600)
        else:
            await ctx.wait_for("approval")

    app.ensure_schema()
    with app.engine.begin() as conn:  # a realistic backlog: runs created before the worker starts
        now = time.time()
        conn.execute(runs.insert(), [
            dict(id=f"run-{i:06d}", workflow="parked", status="pending", input=str(i), input_hash=str(i),
                 created_at=now, updated_at=now, ready_at=now) for i in range(n)])

    async def main() -> dict[str, Any]:
        worker = app.worker(concurrency=64, track=False)
        await worker.start()
        gc.collect()
        baseline = _rss_mb()
        t0 = time.perf_counter()
        await worker.drain()
        elapsed = time.perf_counter() - t0
        gc.collect()
        rss = _rss_mb()
        with app.engine.connect() as conn:
            parked_count = conn.execute(
                sa.select(sa.func.count()).select_from(runs).where(runs.c.status.in_(("sleeping", "waiting")))
            ).scalar()
        tasks = len(asyncio.all_tasks())
        await worker.close()
        if parked_count != n:
            raise AssertionError(f"only {parked_count} of {n} runs parked")
        return {"rss_mb": rss, "baseline_mb": baseline, "tasks": tasks, "elapsed": elapsed}

    return asyncio.run(main())


def run(opts: Options, command: str) -> str:
    env = environment(opts)
    sizes = QUICK_SIZES if opts.quick else SIZES
    figs = sized_figures(
        "memory", "runs", sizes, opts,
        {"rss": lambda r: r["rss_mb"], "delta": lambda r: r["rss_mb"] - r["baseline_mb"],
         "tasks": lambda r: r["tasks"]},
        lambda r: (f"RSS {r['rss_mb']:.0f} MB (+{r['rss_mb'] - r['baseline_mb']:.0f} MB over the idle worker), "
                   f"{r['tasks']} asyncio tasks alive, parked in {r['elapsed']:.1f}s"))
    out = [f"## memory: {TITLE}", "", environment_markdown(env, command),
           f"- **Repetitions:** {opts.reps}, each a fresh process and SQLite database", "",
           "| parked runs | worker RSS MB | growth over the idle worker MB | asyncio tasks alive |",
           "|---|---|---|---|"]
    for n in sizes:
        out.append(f"| {n:,} | {figs[(n, 'rss')].cell('{:.0f}')} | {figs[(n, 'delta')].cell('{:.1f}')} | "
                   f"{figs[(n, 'tasks')].cell('{:.0f}')} |")
    out += ["", "Half the runs sleep an hour, half wait for a signal; target ≤ 200 MB at 10,000 "
            "(a parked run is unwound to a database row: no coroutine is kept).", ""]
    return "\n".join(out)
