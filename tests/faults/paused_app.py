"""A worker process for the paused-worker test (run as a script, stopped and resumed).

    python tests/faults/paused_app.py

Environment:
    CF_URL      database URL (required)
    CF_EFFECTS  side-effect log: one "run_id step pid time" line per step or compensation started
    CF_LEASE    lease seconds
    CF_RUNS     concurrency: how many runs the worker holds at once
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import chainflow as cf
from chainflow.testing import CallLog

EFFECTS = CallLog(Path(os.environ.get("CF_EFFECTS", os.devnull)))
GAP = 0.4  # between steps, waited inline (``inline_wait`` is longer): the run stays held

app = cf.Chainflow(os.environ["CF_URL"], lease_seconds=float(os.environ["CF_LEASE"]))


async def effect(run_id: str, step: str) -> str:
    """The side effect, made on the event loop in the same turn the engine starts the
    step: a line in the log is a step the engine started, stamped with when."""
    EFFECTS.hit(f"{run_id} {step} {os.getpid()} {time.time():.6f}")
    return step


@app.workflow("paced")
async def paced(ctx: cf.Context, steps: int) -> int:
    for i in range(steps):
        await ctx.step(f"s{i}", effect, ctx.run_id, f"s{i}")
        await ctx.sleep(f"gap{i}", GAP)
    return steps


async def done(run_id: str, step: str) -> str:
    await effect(run_id, step)
    return f"{run_id} {step}"


async def undo(value: str) -> None:
    """A compensation: logged as "u<i>" when it starts, then in flight for a while (a
    refund waiting on its payment provider)."""
    run_id, step = value.split()
    await effect(run_id, f"u{step[1:]}")
    await asyncio.sleep(GAP)


@app.workflow("undone")
async def undone(ctx: cf.Context, steps: int) -> int:
    """Every step done, then a failure: the run ends compensating all of them, newest first."""
    for i in range(steps):
        await ctx.step(f"s{i}", done, ctx.run_id, f"s{i}", compensate=undo)
    raise RuntimeError("the order was refused: undo everything")


if __name__ == "__main__":
    app.run_worker(concurrency=int(os.environ["CF_RUNS"]), poll_interval=0.05, inline_wait=1.0)
    sys.exit()
