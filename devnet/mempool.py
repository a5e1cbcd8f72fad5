"""Node-like transaction pool for the in-process EVM.

eth-tester applies transactions straight into the pending block, which makes
replacement, nonce gaps and dropping impossible to model. This pool keeps
signed transactions outside the chain until a block is mined, with geth's
admission rules (duplicate, nonce too low, replacement price bump) so that
code under test meets the same failure modes as against a real node.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from devnet.errors import RpcError

#: geth's generic server error code, used for all pool admission failures.
TX_REJECTED = -32000
#: geth's default `--txpool.pricebump`.
DEFAULT_PRICE_BUMP_PERCENT = 10


@dataclass(frozen=True, slots=True)
class PoolTx:
    """A signed transaction waiting in the pool (py-evm object plus pool bookkeeping)."""

    tx: Any  # py-evm SignedTransactionAPI; untyped because py-evm ships no stubs
    hash: bytes
    sender: bytes
    nonce: int
    max_fee: int
    max_priority_fee: int
    seq: int = field(compare=False)

    def tip_at(self, base_fee: int) -> int:
        """Effective miner tip if included in a block with `base_fee` (negative = not includable)."""
        return min(self.max_priority_fee, self.max_fee - base_fee)


class Mempool:
    """Pending transactions keyed by sender and nonce; not thread-safe (the chain lock guards it)."""

    def __init__(self, price_bump_percent: int = DEFAULT_PRICE_BUMP_PERCENT) -> None:
        self.price_bump_percent = price_bump_percent
        self._by_sender: dict[bytes, dict[int, PoolTx]] = {}
        self._by_hash: dict[bytes, PoolTx] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._by_hash)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._by_hash

    def get(self, tx_hash: bytes) -> PoolTx | None:
        return self._by_hash.get(tx_hash)

    def all(self) -> Iterator[PoolTx]:
        return iter(list(self._by_hash.values()))

    def make_entry(self, tx: Any) -> PoolTx:
        return PoolTx(
            tx=tx,
            hash=bytes(tx.hash),
            sender=bytes(tx.sender),
            nonce=int(tx.nonce),
            max_fee=int(tx.max_fee_per_gas),
            max_priority_fee=int(tx.max_priority_fee_per_gas),
            seq=next(self._seq),
        )

    def add(self, entry: PoolTx, state_nonce: int) -> PoolTx | None:
        """Admit `entry`, returning the transaction it replaced (if any).

        Raises `RpcError` with geth's wording, because client libraries and
        our own retry logic match on these messages.
        """
        if entry.hash in self._by_hash:
            raise RpcError(TX_REJECTED, "already known")
        if entry.nonce < state_nonce:
            raise RpcError(
                TX_REJECTED,
                f"nonce too low: address 0x{entry.sender.hex()}, tx: {entry.nonce} state: {state_nonce}",
            )
        slots = self._by_sender.setdefault(entry.sender, {})
        previous = slots.get(entry.nonce)
        if previous is not None and not self._is_sufficient_bump(previous, entry):
            raise RpcError(TX_REJECTED, "replacement transaction underpriced")
        if previous is not None:
            del self._by_hash[previous.hash]
        slots[entry.nonce] = entry
        self._by_hash[entry.hash] = entry
        return previous

    def _is_sufficient_bump(self, old: PoolTx, new: PoolTx) -> bool:
        # geth: both fee caps must strictly increase *and* by at least the bump percentage.
        if new.max_fee <= old.max_fee or new.max_priority_fee <= old.max_priority_fee:
            return False
        factor = 100 + self.price_bump_percent
        return (
            new.max_fee * 100 >= old.max_fee * factor
            and new.max_priority_fee * 100 >= old.max_priority_fee * factor
        )

    def remove(self, tx_hash: bytes) -> PoolTx | None:
        entry = self._by_hash.pop(tx_hash, None)
        if entry is not None:
            slots = self._by_sender.get(entry.sender, {})
            if slots.get(entry.nonce) is entry:
                del slots[entry.nonce]
            if not slots:
                self._by_sender.pop(entry.sender, None)
        return entry

    def clear(self) -> None:
        self._by_sender.clear()
        self._by_hash.clear()

    def prune_stale(self, state_nonce: Callable[[bytes], int]) -> list[PoolTx]:
        """Drop transactions whose nonce the chain has already used (mined or reverted-to state)."""
        stale = [
            entry
            for sender, slots in self._by_sender.items()
            for entry in slots.values()
            if entry.nonce < state_nonce(sender)
        ]
        for entry in stale:
            self.remove(entry.hash)
        return stale

    def pending_nonce(self, sender: bytes, state_nonce: int) -> int:
        """Next nonce to use: state nonce advanced over the contiguous run of pooled txs."""
        slots = self._by_sender.get(sender, {})
        nonce = state_nonce
        while nonce in slots:
            nonce += 1
        return nonce

    def split(self, state_nonce: Callable[[bytes], int]) -> tuple[list[PoolTx], list[PoolTx]]:
        """(pending, queued) like txpool_content: executable runs vs. txs behind a nonce gap."""
        pending: list[PoolTx] = []
        queued: list[PoolTx] = []
        for sender, slots in self._by_sender.items():
            expected = state_nonce(sender)
            for nonce in sorted(slots):
                if nonce == expected:
                    pending.append(slots[nonce])
                    expected += 1
                else:
                    queued.append(slots[nonce])
        return pending, queued

    def select_for_block(
        self,
        state_nonce: Callable[[bytes], int],
        base_fee: int,
        include: Callable[[PoolTx], bool],
    ) -> list[PoolTx]:
        """Offer includable txs to `include`, best tip first, each sender in nonce order.

        A sender's run stops at a nonce gap, at a tx that cannot pay
        `base_fee`, or when `include` refuses a tx (later nonces could not
        execute without it). Returns the accepted transactions.
        """
        heads: list[tuple[int, int, PoolTx]] = []

        def offer(entry: PoolTx | None) -> None:
            if entry is not None and entry.tip_at(base_fee) >= 0:
                heapq.heappush(heads, (-entry.tip_at(base_fee), entry.seq, entry))

        for sender, slots in self._by_sender.items():
            offer(slots.get(state_nonce(sender)))
        accepted: list[PoolTx] = []
        while heads:
            _, _, entry = heapq.heappop(heads)
            if include(entry):
                accepted.append(entry)
                offer(self._by_sender.get(entry.sender, {}).get(entry.nonce + 1))
        return accepted
