"""Fee pricing: EIP-1559 from ``eth_feeHistory``, legacy ``gasPrice`` where blocks have
no base fee.  All arithmetic is on ints (wei): fees are journaled and compared for
replacement rules, where a float's rounding would be a bug.

A fee budget (``max_fee``, wei per gas) bounds what any version may offer: a market
quote above it is offered at the budget, and a bump the budget cannot hold as a valid
replacement is refused (``TxRejected``), which the tracker turns into the stuck alert.
Without one, only ``TrackerConfig.max_bumps`` bounds how far a fee spike is followed.
"""

from __future__ import annotations

import asyncio
from fractions import Fraction
from statistics import median_low
from typing import Any

from chainflow.chain.adapter import TxRejected

from .errors import RpcError
from .rpc import Rpc
from .values import quantity

#: Used only when the node offers no tip signal at all (no rewards, no
#: eth_maxPriorityFeePerGas): the common mainnet default of wallets.
DEFAULT_PRIORITY_FEE = 10**9
REWARD_PERCENTILE = 50
#: What geth's pool (and anvil's) asks of a replacement: every fee field +10 %.  A bump
#: never asks less, and one the budget clips below this is no replacement.
NODE_PRICE_BUMP = Fraction(11, 10)


class FeeMarket:
    """Quotes fees for a new transaction.  Caches only whether the chain has a base fee
    (London never switches off), so each quote costs one ``eth_feeHistory`` call."""

    def __init__(self, rpc: Rpc, *, history_blocks: int, priority_fee: int | None,
                 max_fee: int | None = None) -> None:
        if history_blocks < 1:
            raise ValueError("fee_history_blocks must be at least 1")
        if priority_fee is not None and (not isinstance(priority_fee, int) or isinstance(priority_fee, bool)
                                         or priority_fee < 0):
            raise ValueError("priority_fee must be a non-negative int number of wei")
        if max_fee is not None and (not isinstance(max_fee, int) or isinstance(max_fee, bool) or max_fee < 1):
            raise ValueError(f"max_fee_per_gas must be a positive int number of wei, got {max_fee!r}")
        self._rpc = rpc
        self._blocks = history_blocks
        self._priority = priority_fee
        self.max_fee = max_fee
        self._eip1559: bool | None = None
        self._asking: dict[asyncio.AbstractEventLoop, asyncio.Future[dict[str, int]]] = {}

    async def quote(self) -> dict[str, int]:
        """``{"max_fee_per_gas", "max_priority_fee_per_gas"}`` or ``{"gas_price"}``.

        The max fee is twice the pending block's base fee plus the tip: that survives six
        consecutive full blocks (+12.5 % each) before the transaction stops being
        includable, while only the actual base fee is ever paid.

        Callers asking while a quote is on its way share it: many submissions signing
        at once would otherwise each ask the node the same question in the same moment.
        """
        loop = asyncio.get_running_loop()
        asking = self._asking.get(loop)
        if asking is None:
            asking = self._asking[loop] = loop.create_task(self._ask())
            asking.add_done_callback(lambda _: self._asking.pop(loop, None))
        return capped(dict(await asyncio.shield(asking)), self.max_fee)

    async def _ask(self) -> dict[str, int]:
        if self._eip1559 is None:
            latest = await self._rpc.call("eth_getBlockByNumber", "latest", False)
            self._eip1559 = bool(latest) and latest.get("baseFeePerGas") is not None
        if not self._eip1559:
            return {"gas_price": quantity(await self._rpc.call("eth_gasPrice"))}
        history: dict[str, Any] = await self._rpc.call(
            "eth_feeHistory", hex(self._blocks), "latest", [REWARD_PERCENTILE]
        ) or {}
        base_fees = history.get("baseFeePerGas") or []
        if base_fees:
            next_base = quantity(base_fees[-1])  # the block after "latest": the pending one
        else:  # nodes with an empty history (fresh chains, eth-tester)
            latest = await self._rpc.call("eth_getBlockByNumber", "latest", False)
            next_base = quantity(latest["baseFeePerGas"])
        tip = await self._tip(history)
        return {"max_fee_per_gas": 2 * next_base + tip, "max_priority_fee_per_gas": tip}

    async def _tip(self, history: dict[str, Any]) -> int:
        if self._priority is not None:
            return self._priority
        rewards = [quantity(r[0]) for r in history.get("reward") or [] if r]
        paid = [r for r in rewards if r > 0]
        if paid:  # empty blocks report 0: they say nothing about the going rate
            return median_low(paid)
        try:
            return quantity(await self._rpc.call("eth_maxPriorityFeePerGas"))
        except RpcError:
            return DEFAULT_PRIORITY_FEE


def capped(fees: dict[str, int], max_fee: int | None) -> dict[str, int]:
    """``fees`` with no field above ``max_fee`` (the tip never above the max fee)."""
    if max_fee is None:
        return fees
    if "gas_price" in fees:
        return {"gas_price": min(fees["gas_price"], max_fee)}
    top = min(fees["max_fee_per_gas"], max_fee)
    return {"max_fee_per_gas": top, "max_priority_fee_per_gas": min(fees["max_priority_fee_per_gas"], top)}


def bump(fees: dict[str, int], factor: float, max_fee: int | None = None) -> dict[str, int]:
    """Every field multiplied by ``factor``, and by at least the node's +10 %
    (``NODE_PRICE_BUMP``: a smaller raise is refused as underpriced), rounded up and
    raised by at least 1 wei; at most ``max_fee``, and ``TxRejected`` (not a revert)
    when that leaves no valid replacement.

    The factor is taken as its decimal text (1.1 means exactly 11/10) so a float's binary
    error never adds a wei, and nodes' "at least +10 %" checks hold exactly.
    """
    exact = Fraction(str(factor))
    if exact < 1:
        raise ValueError(f"bump factor must be at least 1, got {factor!r}")
    exact = max(exact, NODE_PRICE_BUMP)
    out: dict[str, int] = {}
    for key, value in fees.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"fee field {key!r} must be a non-negative int number of wei, got {value!r}")
        out[key] = max(value + 1, _ceil(value * exact))
    limited = capped(out, max_fee)
    for key, value in limited.items():
        old = fees[key]
        if value < max(old + 1, _ceil(old * NODE_PRICE_BUMP)):
            raise TxRejected(f"fee budget exhausted: {key} {old} wei cannot rise by the +10 % nodes ask of a "
                             f"replacement within the max_fee_per_gas of {max_fee} wei", reverted=False)
    return limited


def _ceil(value: Fraction) -> int:
    return -(-value.numerator // value.denominator)
