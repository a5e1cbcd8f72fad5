"""A worker process for the schedules test: an app with one interval schedule, run by
``chainflow worker tests.engine.schedule_app:app`` (several at once, on one database).

Environment: CF_URL (database URL), CF_EVERY (seconds between fires, default 1).
"""

from __future__ import annotations

import os
from typing import Any

import chainflow as cf

app = cf.Chainflow(os.environ["CF_URL"])


@app.workflow("tick")
async def tick(ctx: cf.Context, payload: Any) -> Any:
    return payload


app.schedule(every=float(os.environ.get("CF_EVERY", "1")), name="every-second", workflow="tick",
             input={"from": "schedule"}, missed="all")
