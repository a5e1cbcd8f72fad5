"""A worker process whose one workflow kills it (run as a script, by test_poison).

    python tests/faults/poison_app.py

Environment:
    CF_URL            database URL (required)
    CF_EFFECTS        side-effect log: one "run_id what pid" line per executed effect
    CF_LEASE          lease seconds (default 1.0)
    CF_MAX_RECOVERIES the app's max_recoveries (default 3)
    CF_FIXED          "1": the bug is fixed, the step no longer kills the process
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import chainflow as cf
from chainflow.testing import CallLog

EFFECTS = CallLog(Path(os.environ.get("CF_EFFECTS", os.devnull)))
FIXED = os.environ.get("CF_FIXED") == "1"

app = cf.Chainflow(os.environ["CF_URL"], lease_seconds=float(os.environ.get("CF_LEASE", "1.0")),
                   max_recoveries=int(os.environ.get("CF_MAX_RECOVERIES", "3")))


def reserve(run_id: str) -> str:
    EFFECTS.hit(f"{run_id} reserve {os.getpid()}")
    return run_id


def release(run_id: str) -> None:
    EFFECTS.hit(f"{run_id} compensate:reserve {os.getpid()}")


def explode(run_id: str) -> str:
    EFFECTS.hit(f"{run_id} explode {os.getpid()}")
    if not FIXED:
        os.kill(os.getpid(), signal.SIGKILL)  # e.g. a native library segfaulting on this input
    return "survived"


@app.workflow("poison")
async def poison(ctx: cf.Context, _: object) -> str:
    await ctx.step("reserve", reserve, ctx.run_id, compensate=release)
    return await ctx.step("explode", explode, ctx.run_id)


if __name__ == "__main__":
    app.run_worker(concurrency=4, poll_interval=0.05)
