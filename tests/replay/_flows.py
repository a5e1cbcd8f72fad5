"""Workflows and step code the replay tests record runs of and swap in: module-level,
so forks can name them by import path (``tests.replay._flows:ledger_with_fee``)."""

from __future__ import annotations

import decimal
from typing import Any

import chainflow as cf
from chainflow.testing import CallLog

CALLS: dict[str, CallLog] = {}  # "log" -> the test's call log (set by the fixture)
FEE = decimal.Decimal("0.015")
WEI = 10**30  # an amount beyond every float and int64: diffs must stay exact


def hit(name: str) -> None:
    if "log" in CALLS:
        CALLS["log"].hit(name)


def reserve(order: str) -> dict[str, Any]:
    hit("reserve")
    return {"order": order, "hold": b"\x00\xffhold"}


def ledger(amount: int) -> dict[str, Any]:
    hit("ledger")
    return {"credited": amount, "fee": decimal.Decimal("0")}


def ledger_with_fee(amount: int) -> dict[str, Any]:
    """The new ledger code: a fee, taken exactly."""
    hit("ledger_v2")
    fee = int(amount * FEE)
    return {"credited": amount - fee, "fee": FEE}


def broken_ledger(amount: int) -> dict[str, Any]:
    hit("ledger_broken")
    raise RuntimeError("ledger is down")


def notify(order: str) -> str:
    hit("notify")
    return f"sent {order}"


def undo_reserve(hold: dict[str, Any]) -> None:
    hit("unreserve")


def kyc(order: str) -> str:
    return f"kyc ok {order}"


async def payment(ctx: cf.Context, order: str) -> dict[str, Any]:
    hold = await ctx.step("reserve", reserve, order, compensate=undo_reserve)
    stamp = ctx.now()
    token = ctx.uuid()
    await ctx.sleep("settle", 60)
    approval = await ctx.wait_for("approve")
    posted = await ctx.step("credit-ledger", ledger, WEI + len(order))
    sent = await ctx.step("notify", notify, order)
    return {"hold": hold, "posted": posted, "approval": approval, "sent": sent, "at": stamp.isoformat(),
            "token": str(token), "draw": ctx.random()}


async def payment_with_kyc(ctx: cf.Context, order: str) -> dict[str, Any]:
    """New code: a KYC check inserted after the reservation."""
    hold = await ctx.step("reserve", reserve, order, compensate=undo_reserve)
    await ctx.step("kyc", kyc, order)
    stamp = ctx.now()
    token = ctx.uuid()
    await ctx.sleep("settle", 60)
    approval = await ctx.wait_for("approve")
    posted = await ctx.step("credit-ledger", ledger, WEI + len(order))
    sent = await ctx.step("notify", notify, order)
    return {"hold": hold, "posted": posted, "approval": approval, "sent": sent, "at": stamp.isoformat(),
            "token": str(token), "draw": ctx.random()}


async def payment_without_notify(ctx: cf.Context, order: str) -> dict[str, Any]:
    hold = await ctx.step("reserve", reserve, order, compensate=undo_reserve)
    stamp = ctx.now()
    token = ctx.uuid()
    await ctx.sleep("settle", 60)
    approval = await ctx.wait_for("approve")
    posted = await ctx.step("credit-ledger", ledger, WEI + len(order))
    return {"hold": hold, "posted": posted, "approval": approval, "at": stamp.isoformat(), "token": str(token)}


async def payment_on_broken_ledger(ctx: cf.Context, order: str) -> dict[str, Any]:
    """The same payment recorded while the ledger was down: it fails at credit-ledger."""
    hold = await ctx.step("reserve", reserve, order, compensate=undo_reserve)
    stamp = ctx.now()
    token = ctx.uuid()
    await ctx.sleep("settle", 60)
    approval = await ctx.wait_for("approve")
    posted = await ctx.step("credit-ledger", broken_ledger, WEI + len(order))
    sent = await ctx.step("notify", notify, order)
    return {"hold": hold, "posted": posted, "approval": approval, "sent": sent, "at": stamp.isoformat(),
            "token": str(token), "draw": ctx.random()}


def register(app: cf.Chainflow) -> None:
    app.workflow("payment")(payment)
