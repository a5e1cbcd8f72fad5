"""A worker process for the crash and race tests (run as a script, killed at will).

    python tests/engine/crash_app.py

Environment:
    CF_URL        database URL (required)
    CF_EFFECTS    side-effect log file: one "run_id what pid" line per executed effect
    CF_KILLS      file where a self-kill is announced just before it happens
    CF_WORKER     label of this worker process
    CF_CRASH_AT   "<hook>:<n>": SIGKILL ourselves the n-th time <hook> is reached, where
                  hook is one of
                    step      inside a step, before its side effect
                    effect    inside a step right after its side effect, i.e. before the
                              step returns and long before its journal commit
                    sleep     0.1s into the workflow's durable sleep
                    returned  in workflow code after the last step returned, before
                              the run's finish (which commits that step's row)
                    comp      inside a compensation, after its side effect
    CF_MODE       "crash" (default) or "race"
    CF_LEASE      lease seconds (default 1.0)
    CF_CONCURRENCY  runs in flight per worker (crash mode; default 4)
    CF_STEP_SECONDS how long the sync step of workflow ``long`` takes (default 2.0)

The shutdown tests run it as ``chainflow worker tests.engine.crash_app:app`` instead.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import chainflow as cf
from chainflow.testing import CallLog

URL = os.environ["CF_URL"]
EFFECTS = CallLog(Path(os.environ.get("CF_EFFECTS", os.devnull)))
KILLS = CallLog(Path(os.environ.get("CF_KILLS", os.devnull)))
WORKER = os.environ.get("CF_WORKER", f"w{os.getpid()}")
MODE = os.environ.get("CF_MODE", "crash")
LEASE = float(os.environ.get("CF_LEASE", "1.0"))

_plan = os.environ.get("CF_CRASH_AT", "")
CRASH_HOOK, CRASH_AT = (_plan.split(":")[0], int(_plan.split(":")[1])) if _plan else ("", 0)
_hits: dict[str, int] = {}
_lock = threading.Lock()

app = cf.Chainflow(URL, lease_seconds=LEASE)


def die(hook: str, where: str) -> None:
    KILLS.hit(f"{hook} {where} {WORKER} {os.getpid()}")
    os.kill(os.getpid(), signal.SIGKILL)


def hook(name: str, where: str) -> bool:
    """True when this is the planned crash point (the caller kills or schedules it)."""
    if name != CRASH_HOOK:
        return False
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        return _hits[name] == CRASH_AT


def effect(run_id: str, what: str) -> dict[str, str]:
    if hook("step", f"{run_id}:{what}"):
        die("step", f"{run_id}:{what}")
    time.sleep(0.01 + random.random() * 0.02)  # some work, so crashes land mid-flight
    EFFECTS.hit(f"{run_id} {what} {os.getpid()}")
    if hook("effect", f"{run_id}:{what}"):
        die("effect", f"{run_id}:{what}")
    return {"run": run_id, "step": what}


async def async_effect(run_id: str, what: str) -> dict[str, str]:
    await asyncio.sleep(random.random() * 0.01)
    return effect(run_id, what)


def undo(output: dict[str, str]) -> None:
    run_id, what = output["run"], f"compensate:{output['step']}"
    EFFECTS.hit(f"{run_id} {what} {os.getpid()}")
    if hook("comp", f"{run_id}:{what}"):
        die("comp", f"{run_id}:{what}")


class Declined(Exception):
    pass


def charge(run_id: str) -> None:
    EFFECTS.hit(f"{run_id} charge-attempt {os.getpid()}")
    raise Declined(f"card declined for {run_id}")


@app.workflow("crashy")
async def crashy(ctx: cf.Context, order: dict[str, Any]) -> list[Any]:
    rid = ctx.run_id
    reserved = await ctx.step("reserve", effect, rid, "reserve", compensate=undo)
    debited = await ctx.step("debit", async_effect, rid, "debit", compensate=undo)
    if hook("sleep", rid):
        asyncio.get_running_loop().call_later(0.1, die, "sleep", rid)
    await ctx.sleep("cool", 0.3)
    ledger = await ctx.step("ledger", effect, rid, "ledger", compensate=undo)
    if order["fail"]:
        await ctx.step("charge", charge, rid, retry=cf.Retry(max_attempts=2, initial=0.05, jitter=0))
    notified = await ctx.step("notify", effect, rid, "notify")
    if hook("returned", rid):
        die("returned", rid)
    return [reserved, debited, ledger, notified, order["n"]]


def slow_effect(run_id: str, what: str) -> dict[str, str]:
    EFFECTS.hit(f"{run_id} {what}-start {os.getpid()}")
    time.sleep(float(os.environ.get("CF_STEP_SECONDS", "2.0")))
    EFFECTS.hit(f"{run_id} {what}-end {os.getpid()}")
    return {"run": run_id, "step": what}


@app.workflow("long")
async def long(ctx: cf.Context, _: Any) -> list[Any]:
    """A sync step with a compensation, long enough to be in flight at a SIGTERM."""
    done = await ctx.step("work", slow_effect, ctx.run_id, "work", compensate=undo)
    return [done, await ctx.step("after", effect, ctx.run_id, "after")]


@app.workflow("keyed")
async def keyed(ctx: cf.Context, _: Any) -> dict[str, str]:
    """A payment under a recorded idempotency key: every attempt must use the same one."""
    key = str(ctx.uuid())
    return await ctx.step("pay", effect, ctx.run_id, f"pay:{key}")


# --- race mode ---------------------------------------------------------------------

_log_engine: Any = None


def race_step(run_id: str, step: str) -> str:
    import sqlalchemy as sa

    start = time.time()
    time.sleep(0.002 + random.random() * 0.01)
    end = time.time()
    with _log_engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO race_log (run_id, worker, step, started, ended) VALUES (:r, :w, :s, :a, :b)"),
            {"r": run_id, "w": WORKER, "s": step, "a": start, "b": end},
        )
    return step


@app.workflow("race")
async def race(ctx: cf.Context, n: int) -> int:
    await ctx.step("one", race_step, ctx.run_id, "one")
    await ctx.sleep("hop", 0.2)  # suspends (inline_wait=0): any worker may pick it up next
    await ctx.step("two", race_step, ctx.run_id, "two")
    await ctx.sleep("hop", 0.1)
    await ctx.step("three", race_step, ctx.run_id, "three")
    return n


def main() -> None:
    global _log_engine
    if MODE == "race":
        import sqlalchemy as sa

        _log_engine = sa.create_engine(URL.replace("postgresql://", "postgresql+psycopg://", 1), pool_size=16)
        app.run_worker(concurrency=16, poll_interval=0.02, inline_wait=0.0)
    else:
        app.run_worker(concurrency=int(os.environ.get("CF_CONCURRENCY", "4")), poll_interval=0.05)


if __name__ == "__main__":
    main()
    sys.exit()
