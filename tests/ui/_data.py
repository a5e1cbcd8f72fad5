"""Runs of every kind, made by a real worker: what the dashboard tests look at."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
from dataclasses import dataclass, field
from typing import Any

import chainflow as cf

from ..engine._util import running_worker, wait_status

BIG = 10**30 + 7  # wei beyond 2**64: a float would show 1e+30
PRICE = decimal.Decimal("1234.000000000000000001")
RAW = b"\x00\xfe\xff"


@dataclass
class Runs:
    app: cf.Chainflow
    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)


def register(app: cf.Chainflow) -> None:
    def quote(order: int) -> dict[str, Any]:
        return {"wei": BIG + order, "price": PRICE, "raw": RAW, "at": dt.datetime(2026, 1, 31, 12, tzinfo=dt.UTC)}

    def flaky(order: int) -> None:
        raise ValueError(f"card declined for order {order}")

    @app.workflow("payout")
    async def payout(ctx: cf.Context, order: int) -> dict[str, Any]:
        q = await ctx.step("quote", quote, order)
        await ctx.step("ledger", lambda: order)
        return q

    @app.workflow("refund")
    async def refund(ctx: cf.Context, order: int) -> None:
        await ctx.step("charge", flaky, order, retry=cf.Retry(max_attempts=2, initial=0.01))

    @app.workflow("approval")
    async def approval(ctx: cf.Context, order: int) -> Any:
        await ctx.step("quote", quote, order)
        return await ctx.wait_for("approve", timeout=3600)


async def populate(app: cf.Chainflow, completed: int = 3, failed: int = 2, waiting: int = 2) -> Runs:
    register(app)
    runs = Runs(app)
    async with running_worker(app):
        for i in range(completed):
            runs.completed.append((await app.astart("payout", i, idempotency_key=f"order-{i}")).id)
        for i in range(failed):
            runs.failed.append((await app.astart("refund", 100 + i)).id)
        for i in range(waiting):
            runs.waiting.append((await app.astart("approval", 200 + i)).id)
        for rid in runs.completed:
            await wait_status(app, rid, ("completed",))
        for rid in runs.failed:
            await wait_status(app, rid, ("failed",))
        for rid in runs.waiting:
            await wait_status(app, rid, ("waiting",))
        await asyncio.sleep(0)
    return runs
