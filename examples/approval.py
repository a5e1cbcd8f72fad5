"""A transfer that waits for a human's approval: the amount is held on the ledger at
once, released to the payee when an approver signals ``approval`` with
``{"approved": true}``, and given back when the approver refuses -- or when nobody
answers within the approval window, in which case the run fails with
``ApprovalExpired`` and its compensation returns the hold, exactly once.

The wait is durable: no process needs to be up while the run waits (a day, by
default); the approval reaches it from anywhere::

    chainflow signal RUN approval --payload '{"approved": true, "by": "alice"}'

Run the demo (SQLite in a temporary directory, a fake clock that skips the day):
``python -m examples.approval``.
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

APPROVAL_WINDOW = dt.timedelta(hours=24)


class ApprovalExpired(Exception):
    """Nobody approved or refused in time."""


class ApprovalRefused(Exception):
    """The approver said no."""


def build(db_url: str, ledger: Ledger, clock: cf.Clock | None = None) -> cf.Chainflow:
    app = cf.Chainflow(db_url, clock=clock)

    def hold(t: dict[str, Any]) -> dict[str, Any]:
        ledger.post(t["from"], f"hold:{t['id']}", -t["amount"])
        return {"account": t["from"], "ref": t["id"], "amount": t["amount"]}

    def release(held: dict[str, Any]) -> None:  # the hold's compensation
        ledger.post(held["account"], f"release:{held['ref']}", held["amount"])

    def pay(t: dict[str, Any], approver: str) -> int:
        return ledger.post(t["to"], f"transfer:{t['id']}:{approver}", t["amount"])

    @app.workflow("approved_transfer")
    async def approved_transfer(ctx: cf.Context, t: dict[str, Any]) -> dict[str, Any]:
        await ctx.step("hold", hold, t, compensate=release)
        try:
            decision = await ctx.wait_for("approval", timeout=APPROVAL_WINDOW)
        except cf.WaitTimeout:
            raise ApprovalExpired(f"transfer {t['id']}: no decision within {APPROVAL_WINDOW}") from None
        if not decision.get("approved"):
            raise ApprovalRefused(f"transfer {t['id']} refused by {decision.get('by', '?')}")
        entry = await ctx.step("pay", pay, t, str(decision.get("by", "?")))
        return {"entry": entry, "approved_by": decision.get("by")}

    return app


async def demo(directory: Path) -> None:
    ledger = Ledger(directory / "ledger.db")
    ledger.post("acme", "opening", 1_000)
    app = build(f"sqlite:///{directory}/approval.db", ledger, clock=cf.FakeClock())
    tester = WorkflowTester(app)
    approved = await app.astart("approved_transfer", {"id": "t1", "from": "acme", "to": "bob", "amount": 300})
    expired = await app.astart("approved_transfer", {"id": "t2", "from": "acme", "to": "bob", "amount": 200})
    await tester.run_until_idle(advance=False)
    print("holding: acme", ledger.balance("acme"))
    await app.asignal(approved.id, "approval", {"approved": True, "by": "alice"})
    await tester.run_until_idle()  # jumps the clock past t2's approval window
    for handle in (approved, expired):
        st = app.status(handle.id)
        print(handle.id, st.status, st.output or (st.error or {}).get("message"))
    print("acme", ledger.balance("acme"), "bob", ledger.balance("bob"))
    app.engine.dispose()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(demo(Path(d)))
