"""eth_feeHistory over py-evm blocks.

eth-tester's version returns a fixed oldestBlock, one base fee too few and
no rewards; fee estimators (web3's, ours) need the real shape: N+1 base fees
including the next block's, and gas-weighted tip percentiles like geth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class FeeHistory:
    oldest_block: int
    base_fees: list[int]  # one per block plus the block after `newest`
    gas_used_ratios: list[float]
    rewards: list[list[int]] | None  # None when no percentiles were asked for


def fee_history(
    blocks: list[Any],
    following_base_fee: int,
    percentiles: list[float],
    receipts_of: Callable[[Any], list[Any]],
) -> FeeHistory:
    """`blocks` ascending; `following_base_fee` is the base fee of the block after the last one."""
    base_fees = [int(block.header.base_fee_per_gas) for block in blocks] + [following_base_fee]
    ratios = [
        block.header.gas_used / block.header.gas_limit if block.header.gas_limit else 0.0 for block in blocks
    ]
    rewards = (
        [block_rewards(block, receipts_of(block), percentiles) for block in blocks] if percentiles else None
    )
    return FeeHistory(
        oldest_block=int(blocks[0].header.block_number),
        base_fees=base_fees,
        gas_used_ratios=ratios,
        rewards=rewards,
    )


def block_rewards(block: Any, receipts: list[Any], percentiles: list[float]) -> list[int]:
    """Effective tips at gas-weighted percentiles (geth's algorithm); zeros for empty blocks."""
    header = block.header
    if not block.transactions or not header.gas_used:
        return [0 for _ in percentiles]
    base_fee = int(header.base_fee_per_gas)
    tips_and_gas: list[tuple[int, int]] = []
    previous_cumulative = 0
    for tx, receipt in zip(block.transactions, receipts, strict=True):
        tip = min(tx.max_priority_fee_per_gas, tx.max_fee_per_gas - base_fee)
        tips_and_gas.append((int(tip), int(receipt.gas_used) - previous_cumulative))
        previous_cumulative = int(receipt.gas_used)
    tips_and_gas.sort()
    out: list[int] = []
    index = 0
    cumulative = tips_and_gas[0][1]
    for pct in percentiles:
        threshold = header.gas_used * pct / 100
        while cumulative < threshold and index < len(tips_and_gas) - 1:
            index += 1
            cumulative += tips_and_gas[index][1]
        out.append(tips_and_gas[index][0])
    return out
