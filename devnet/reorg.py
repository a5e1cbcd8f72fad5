"""Chain-reorganisation injection that works the same on anvil and the in-process EVM.

Two strategies, because they model different situations:

* `reorg()` replaces the newest N blocks right now (anvil_reorg, which the
  in-process EVM implements too): "the last N blocks you saw are gone".
* `mark_fork_point()` + `reorg_to()` use evm_snapshot/evm_revert: mark a
  height first, let the code under test act, then switch to a competing
  branch from the mark (works on any node with snapshots, e.g. hardhat).

Both report what changed so tests can assert on exactly the orphaned blocks
and transactions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from devnet.base import Devnet
from devnet.errors import DevnetError
from devnet.rpc import to_quantity


@dataclass(frozen=True, slots=True)
class ReorgResult:
    """What a reorg did, lists ordered by ascending height; hashes in the chain's own
    notation (0x-hex on the EVM devnets, plain hex on `RegtestNode`)."""

    fork_height: int  # last block shared by the old and the new branch
    old_hashes: list[str]
    new_hashes: list[str]
    orphaned_txs: list[str] = field(default_factory=list)
    replayed_txs: list[str] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.old_hashes)


@dataclass(frozen=True, slots=True)
class ForkPoint:
    """A snapshot taken at `height`; single use (reverting consumes it)."""

    snapshot_id: str
    height: int
    block_hash: str


def _block(devnet: Devnet, number: int) -> dict[str, Any]:
    block = devnet.rpc("eth_getBlockByNumber", to_quantity(number), False)
    if block is None:
        raise DevnetError(f"block {number} not found")
    return dict(block)


def _head(devnet: Devnet) -> int:
    return int(devnet.rpc("eth_blockNumber"), 16)


def _branch(devnet: Devnet, first: int, last: int) -> list[dict[str, Any]]:
    return [_block(devnet, n) for n in range(first, last + 1)]


def _raw_txs(devnet: Devnet, blocks: list[dict[str, Any]], fork_height: int) -> list[tuple[str, int]]:
    """(raw tx, offset from the first replaced block) for every tx in `blocks`."""
    pairs: list[tuple[str, int]] = []
    for block in blocks:
        offset = int(block["number"], 16) - fork_height - 1
        for tx_hash in block["transactions"]:
            raw = devnet.rpc("eth_getRawTransactionByHash", tx_hash)
            if raw is None:
                raise DevnetError(f"node does not know raw tx {tx_hash}")
            pairs.append((raw, offset))
    return pairs


def _tx_hashes(blocks: list[dict[str, Any]]) -> list[str]:
    return [tx for block in blocks for tx in block["transactions"]]


def reorg(devnet: Devnet, depth: int, *, replay_txs: bool = False, extra_blocks: int = 0) -> ReorgResult:
    """Replace the newest `depth` blocks with new ones at the same heights, plus `extra_blocks`.

    With `replay_txs` the orphaned transactions are re-included at the same
    offsets (same tx hashes, new block hashes: a "shallow" reorg). Without
    it they vanish from the chain and the mempool, as when the competing
    branch never saw them.
    """
    head = _head(devnet)
    if not 0 < depth <= head:
        raise ValueError(f"depth must be in 1..{head}, got {depth}")
    fork_height = head - depth
    old_blocks = _branch(devnet, fork_height + 1, head)
    replay = _raw_txs(devnet, old_blocks, fork_height) if replay_txs else []
    devnet.rpc("anvil_reorg", depth, [[raw, offset] for raw, offset in replay])
    if extra_blocks:
        devnet.mine(extra_blocks)
    new_blocks = _branch(devnet, fork_height + 1, head + extra_blocks)
    _check_replaced(old_blocks, new_blocks)
    orphaned = _tx_hashes(old_blocks)
    return ReorgResult(
        fork_height=fork_height,
        old_hashes=[b["hash"] for b in old_blocks],
        new_hashes=[b["hash"] for b in new_blocks],
        orphaned_txs=orphaned,
        replayed_txs=orphaned if replay_txs else [],
    )


def rollback(devnet: Devnet, depth: int = 1) -> list[str]:
    """Drop the newest `depth` blocks (chain gets shorter); returns the removed hashes."""
    head = _head(devnet)
    if not 0 < depth <= head:
        raise ValueError(f"depth must be in 1..{head}, got {depth}")
    removed = [b["hash"] for b in _branch(devnet, head - depth + 1, head)]
    devnet.rpc("anvil_rollback", depth)
    return removed


def mark_fork_point(devnet: Devnet) -> ForkPoint:
    """Snapshot the current head as the base of a future competing branch."""
    head = _block(devnet, _head(devnet))
    return ForkPoint(snapshot_id=devnet.snapshot(), height=int(head["number"], 16), block_hash=head["hash"])


def reorg_to(
    devnet: Devnet,
    point: ForkPoint,
    *,
    new_blocks: int | None = None,
    replay_txs: bool = False,
) -> ReorgResult:
    """Abandon everything after `point` and build a new branch of `new_blocks` blocks.

    `new_blocks` defaults to the length of the abandoned branch (same
    height, different hashes); pass more to model a longer branch winning.
    Replayed transactions are submitted to the mempool of the new branch and
    mined in their original block order.
    """
    head = _head(devnet)
    old_blocks = _branch(devnet, point.height + 1, head)
    count = len(old_blocks) if new_blocks is None else new_blocks
    if count < 1:
        raise ValueError("the new branch needs at least one block")
    replay = _raw_txs(devnet, old_blocks, point.height) if replay_txs else []
    if not devnet.revert(point.snapshot_id):
        raise DevnetError(f"snapshot {point.snapshot_id} unknown (already used?)")
    automine = bool(devnet.rpc("anvil_getAutomine"))
    devnet.rpc("evm_setAutomine", False)
    try:
        for offset in range(count):
            for raw, at in replay:
                if at == offset or (offset == count - 1 and at >= count):
                    devnet.rpc("eth_sendRawTransaction", raw)
            devnet.mine(1)
    finally:
        devnet.rpc("evm_setAutomine", automine)
    branch = _branch(devnet, point.height + 1, point.height + count)
    _check_replaced(old_blocks, branch)
    orphaned = _tx_hashes(old_blocks)
    return ReorgResult(
        fork_height=point.height,
        old_hashes=[b["hash"] for b in old_blocks],
        new_hashes=[b["hash"] for b in branch],
        orphaned_txs=orphaned,
        replayed_txs=orphaned if replay_txs else [],
    )


def _check_replaced(old_blocks: list[dict[str, Any]], new_blocks: list[dict[str, Any]]) -> None:
    # A "reorg" that reproduced identical blocks would silently test nothing.
    for old, new in zip(old_blocks, new_blocks, strict=False):
        if old["hash"] == new["hash"]:
            raise DevnetError(f"block {int(old['number'], 16)} kept its hash; no reorg happened")
