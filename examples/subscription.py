"""A subscription: charge, sleep 30 days (durably: the run is a database row
meanwhile, not a process), renew, for a number of periods; cancel it at any time
with ``chainflow cancel RUN`` (the sleep ends at once and the run is cancelled).

Each charge's idempotency reference is the run's own (subscription id + period), so a
retried or replayed charge never bills twice.  Tests advance an injected clock
instead of waiting a month (``chainflow.testing.WorkflowTester``).

Run the demo: ``python -m examples.subscription``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import chainflow as cf
from chainflow.testing import WorkflowTester

from .ledger import Ledger

PERIOD = dt.timedelta(days=30)


def build(db_url: str, ledger: Ledger, clock: cf.Clock | None = None) -> cf.Chainflow:
    app = cf.Chainflow(db_url, clock=clock)

    def charge(sub: dict[str, Any], period: int, at: str) -> int:
        return ledger.post(sub["customer"], f"charge:{sub['id']}:{period}:{at}", -sub["price"])

    @app.workflow("subscription")
    async def subscription(ctx: cf.Context, sub: dict[str, Any]) -> dict[str, Any]:
        charged = []
        for period in range(sub["periods"]):
            if period:
                await ctx.sleep(f"period-{period}", PERIOD)
            at = ctx.now().date().isoformat()
            await ctx.step(f"charge-{period}", charge, sub, period, at)
            charged.append(at)
        return {"charged_on": charged}

    return app


async def demo(directory: Path) -> None:
    ledger = Ledger(directory / "ledger.db")
    clock = cf.FakeClock()
    app = build(f"sqlite:///{directory}/subscription.db", ledger, clock=clock)
    result = await WorkflowTester(app).run("subscription", {"id": "s1", "customer": "carol", "price": 9,
                                                            "periods": 3})
    print(result.status, result.output, "carol", ledger.balance("carol"))
    app.engine.dispose()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(demo(Path(d)))
