"""Fee pricing: EIP-1559 from fee history, legacy gasPrice where there is no base fee.

All arithmetic is on ints (wei); fees are never floats.
"""

from __future__ import annotations

from typing import Any

from .rpc import Rpc


async def price(rpc: Rpc, *, blocks: int, priority: int | None) -> dict[str, int]:
    pending = await rpc.call("eth_getBlockByNumber", "pending", False) or await rpc.call(
        "eth_getBlockByNumber", "latest", False
    )
    base = pending.get("baseFeePerGas") if pending else None
    if base is None:
        return {"gas_price": int(await rpc.call("eth_gasPrice"), 16)}
    history: dict[str, Any] = await rpc.call("eth_feeHistory", hex(blocks), "pending", [50])
    next_base = int(history["baseFeePerGas"][-1], 16) if history.get("baseFeePerGas") else int(base, 16)
    if priority is None:
        rewards = [int(r[0], 16) for r in history.get("reward") or [] if r]
        rewards.sort()
        priority = rewards[len(rewards) // 2] if rewards else 10**9
        priority = max(priority, 1)
    # twice the next base fee survives six full blocks of +12.5% base fee growth
    return {"max_fee_per_gas": 2 * next_base + priority, "max_priority_fee_per_gas": priority}


def bump(fees: dict[str, int], factor: float) -> dict[str, int]:
    """Every field raised by at least ``factor`` (and at least 1 wei), rounded up."""
    num, den = round(factor * 10_000), 10_000
    return {k: max(v + 1, -(-v * num // den)) for k, v in fees.items()}
