"""An in-memory UTXO chain and its adapter, for fast tests of the whole protocol
(like httpx's ``MockTransport``: the engine talks to it exactly as to a node).

``FakeUtxoChain`` keeps blocks, a mempool and the coins they create and spend; the
test drives it: ``fund`` coins, ``mine`` blocks (mining never happens by itself, so
"mining paused" is the default), ``reorg`` the chain on demand, ``foreign_spend`` an
outpoint with a transaction nobody in the engine signed.  Its rules are Bitcoin's in
miniature:

* a transaction whose inputs are already spent in a block is refused (``SPENT``);
* one that conflicts with mempool transactions replaces them only if it pays more than
  all of them together plus ``incremental_fee`` (a simple RBF rule), else ``UNDERPRICED``;
* bytes already in the mempool or in a block are ``ALREADY_KNOWN`` (idempotent broadcast);
* a block takes the mempool transactions paying at least ``min_mining_fee``;
* a reorg puts the orphaned blocks' transactions back into the mempool (as Bitcoin
  Core does) unless told to drop them (a node that lost its mempool).

``FakeUtxoAdapter`` is the engine's view of one wallet on it: a ``ChainAdapter`` and a
``CoinSource`` (no ``NonceSource``), so the engine binds each intent to reserved coins.
"Signing" is a JSON encoding that names the wallet; the transaction id is its hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from ..chain.adapter import (
    BroadcastOutcome,
    BroadcastResult,
    Coin,
    Header,
    Receipt,
    SignedTx,
    TxRejected,
)

DUST = 546  # change below this is left to the fee, as Bitcoin wallets do


@dataclass(frozen=True)
class FakeTx:
    inputs: tuple[str, ...]  # outpoints "txid:index"
    outputs: tuple[tuple[str, int], ...]  # (address, value)
    signer: str  # the wallet that "signed": a foreign spend names someone else
    tag: str = ""  # makes coinbase and test transactions unique

    @property
    def raw(self) -> bytes:
        return json.dumps({"in": list(self.inputs), "out": [list(o) for o in self.outputs], "signer": self.signer,
                           "tag": self.tag}, sort_keys=True).encode()

    @property
    def txid(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @staticmethod
    def parse(raw: bytes) -> FakeTx:
        data = json.loads(raw)
        return FakeTx(tuple(data["in"]), tuple((str(a), int(v)) for a, v in data["out"]), data["signer"],
                      data.get("tag", ""))


@dataclass(frozen=True)
class FakeBlock:
    number: int
    hash: str
    parent_hash: str
    txids: tuple[str, ...]

    @property
    def header(self) -> Header:
        return Header(self.number, self.hash, self.parent_hash, 1_700_000_000 + self.number)


class FakeUtxoChain:
    """Blocks, a mempool and coins, all in memory; every change is the test's call."""

    def __init__(self, *, incremental_fee: int = 100, min_mining_fee: int = 0) -> None:
        self.incremental_fee = incremental_fee
        self.min_mining_fee = min_mining_fee
        self.txs: dict[str, FakeTx] = {}  # every transaction ever seen, canonical or not
        self.blocks: dict[str, FakeBlock] = {}  # every block ever made, by hash
        self.canonical: list[str] = []  # block hashes by height
        self.mempool: dict[str, FakeTx] = {}
        self.broadcasts: list[bytes] = []  # every raw transaction offered, in order
        self._salt = 0
        self._make_block([])  # genesis

    # --- reading ------------------------------------------------------------------

    @property
    def height(self) -> int:
        return len(self.canonical) - 1

    def block_at(self, number: int) -> FakeBlock | None:
        return self.blocks[self.canonical[number]] if 0 <= number <= self.height else None

    def utxos(self) -> dict[str, tuple[str, int]]:
        """Unspent outputs of the canonical chain: outpoint -> (address, value)."""
        out: dict[str, tuple[str, int]] = {}
        for h in self.canonical:
            for txid in self.blocks[h].txids:
                tx = self.txs[txid]
                for op in tx.inputs:
                    out.pop(op, None)
                for i, o in enumerate(tx.outputs):
                    out[f"{txid}:{i}"] = o
        return out

    def output(self, outpoint: str) -> tuple[str, int]:
        txid, _, index = outpoint.partition(":")
        return self.txs[txid].outputs[int(index)]

    def location(self, txid: str) -> tuple[FakeBlock, int] | None:
        """The canonical block holding ``txid`` and its index there."""
        for h in self.canonical:
            block = self.blocks[h]
            if txid in block.txids:
                return block, block.txids.index(txid)
        return None

    def spender(self, outpoint: str) -> str | None:
        """The canonical transaction spending ``outpoint``."""
        for h in self.canonical:
            for txid in self.blocks[h].txids:
                if outpoint in self.txs[txid].inputs:
                    return txid
        return None

    def conflicting(self, outpoint: str) -> str | None:
        """The canonical transaction spending an input of the one creating ``outpoint``,
        when that one is not canonical: ``outpoint`` can then never exist."""
        txid = outpoint.partition(":")[0]
        tx = self.txs.get(txid)
        if tx is None or self.location(txid) is not None:
            return None
        return next((spend for spend in map(self.spender, tx.inputs) if spend is not None), None)

    def fee(self, tx: FakeTx) -> int:
        return sum(self.output(op)[1] for op in tx.inputs) - sum(v for _, v in tx.outputs)

    def payments(self, address: str) -> list[tuple[str, int]]:
        """(txid, value) of every canonical output paying ``address``."""
        return [(txid, v) for h in self.canonical for txid in self.blocks[h].txids
                for a, v in self.txs[txid].outputs if a == address]

    # --- acting -------------------------------------------------------------------

    def fund(self, address: str, value: int) -> str:
        """Mine a block whose coinbase pays ``address``; returns the new outpoint."""
        self._salt += 1
        tx = FakeTx((), ((address, value),), "coinbase", tag=f"coinbase-{self._salt}")
        self.txs[tx.txid] = tx
        self._make_block([tx.txid])
        return f"{tx.txid}:0"

    def submit(self, raw: bytes) -> BroadcastResult:
        self.broadcasts.append(bytes(raw))
        try:
            tx = FakeTx.parse(raw)
        except (ValueError, KeyError, TypeError) as exc:
            return BroadcastResult(BroadcastOutcome.REJECTED, f"TX decode failed: {exc}")
        txid = tx.txid
        if self.location(txid) is not None:
            return BroadcastResult(BroadcastOutcome.ALREADY_KNOWN, "transaction already in block chain")
        if txid in self.mempool:
            return BroadcastResult(BroadcastOutcome.ALREADY_KNOWN, "txn-already-in-mempool")
        unspent = self.utxos()
        for op in tx.inputs:
            if op not in unspent:
                if self.spender(op) is not None:
                    return BroadcastResult(BroadcastOutcome.SPENT, f"bad-txns-inputs-missingorspent ({op})")
                return BroadcastResult(BroadcastOutcome.REJECTED, f"unknown input {op}")
        fee = self.fee(tx)
        if fee < 0:
            return BroadcastResult(BroadcastOutcome.REJECTED, "bad-txns-in-belowout")
        conflicts = [c for c in self.mempool.values() if set(c.inputs) & set(tx.inputs)]
        if conflicts:
            needed = sum(self.fee(c) for c in conflicts) + self.incremental_fee
            if fee < needed:
                return BroadcastResult(BroadcastOutcome.UNDERPRICED,
                                       f"insufficient fee: replacement pays {fee}, needs {needed}")
            for c in conflicts:
                del self.mempool[c.txid]
        self.txs[txid] = tx
        self.mempool[txid] = tx
        return BroadcastResult(BroadcastOutcome.ACCEPTED)

    def mine(self, n: int = 1) -> list[str]:
        """Mine ``n`` blocks from the mempool (those paying ``min_mining_fee``); hashes."""
        made = []
        for _ in range(n):
            unspent = set(self.utxos())
            take = []
            for txid, tx in list(self.mempool.items()):
                if self.fee(tx) >= self.min_mining_fee and set(tx.inputs) <= unspent:
                    unspent -= set(tx.inputs)
                    take.append(txid)
                    del self.mempool[txid]
            made.append(self._make_block(take).hash)
        return made

    def foreign_spend(self, outpoint: str, *, to: str = "foreign", mine: bool = True) -> str:
        """Spend ``outpoint`` with a transaction the engine did not sign (a key used
        elsewhere); mined at once into a block (evicting what conflicts with it in the
        mempool) or, with ``mine=False``, left in the mempool.  Returns its txid."""
        _, value = self.output(outpoint)
        self._salt += 1
        tx = FakeTx((outpoint,), ((to, value - 1000),), "foreign", tag=f"foreign-{self._salt}")
        self.txs[tx.txid] = tx
        for c in [c for c in self.mempool.values() if outpoint in c.inputs]:
            del self.mempool[c.txid]
        if mine:
            self._make_block([tx.txid])
        else:
            self.mempool[tx.txid] = tx
        return tx.txid

    def reorg(self, depth: int, *, new_blocks: int | None = None, drop_txs: bool = False) -> list[str]:
        """Orphan the top ``depth`` blocks and mine ``new_blocks`` (default ``depth + 1``)
        empty ones on the fork; the orphaned transactions go back to the mempool unless
        ``drop_txs``.  Returns the orphaned hashes."""
        if not 1 <= depth <= self.height:
            raise ValueError(f"reorg depth must be within 1..{self.height}, got {depth!r}")
        orphaned = self.canonical[-depth:]
        del self.canonical[-depth:]
        if not drop_txs:
            for h in orphaned:
                for txid in self.blocks[h].txids:
                    if self.txs[txid].inputs:  # coinbases die with their block
                        self.mempool[txid] = self.txs[txid]
        for _ in range(depth + 1 if new_blocks is None else new_blocks):
            self._make_block([])
        return orphaned

    def _make_block(self, txids: list[str]) -> FakeBlock:
        parent = self.canonical[-1] if self.canonical else "0" * 64
        self._salt += 1
        number = len(self.canonical)
        digest = hashlib.sha256(f"{parent}|{number}|{','.join(txids)}|{self._salt}".encode()).hexdigest()
        block = FakeBlock(number, digest, parent, tuple(txids))
        self.blocks[digest] = block
        self.canonical.append(digest)
        return block


def pay(to: str, value: int) -> dict[str, Any]:
    """A payment of ``value`` (smallest unit, an int) to ``to``: the ``tx`` of ``ctx.submit``."""
    return {"to": to, "value": value}


def _paid(request: dict[str, Any]) -> int:
    return sum(int(value) for _, value in request["outputs"])


class FakeUtxoAdapter:
    """One wallet on a ``FakeUtxoChain``: reading, broadcasting, building and a coin source.

    ``fee`` is what a first version pays (the "market"); ``fee_budget`` is how much
    above the payment ``select`` reserves, so replacements raising the fee still fit in
    the same inputs."""

    finality_kinds = frozenset({"confirmations"})  # no finality tags, like Bitcoin

    def __init__(self, name: str, chain: FakeUtxoChain, wallet: str = "wallet", *, fee: int = 500,
                 fee_budget: int = 5_000) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"FakeUtxoAdapter needs a non-empty name, got {name!r}")
        self.name, self.chain, self.wallet = name, chain, wallet
        self.fee, self.fee_budget = fee, fee_budget  # no version ever pays more than fee_budget

    # --- building -----------------------------------------------------------------

    def sender(self) -> str:
        return self.wallet

    def prepare(self, tx: Any) -> dict[str, Any]:
        if not isinstance(tx, dict) or set(tx) != {"to", "value"}:
            raise ValueError(f"tx must be pay(to, value), got {tx!r}")
        to, value = tx["to"], tx["value"]
        if not isinstance(to, str) or not to:
            raise ValueError(f"tx 'to' must be a non-empty address, got {to!r}")
        if not isinstance(value, int) or isinstance(value, bool) or value <= DUST:
            raise ValueError(f"tx 'value' must be an int above the dust limit {DUST}, got {value!r}")
        return {"outputs": [[to, value]]}

    def merge(self, requests: list[dict[str, Any]]) -> dict[str, Any]:
        return {"outputs": [o for r in requests for o in r["outputs"]]}

    def member_receipt(self, receipt: Receipt, index: int) -> Receipt:
        return dataclasses.replace(receipt, extra={**receipt.extra, "output_index": index})

    async def estimate(self, request: dict[str, Any]) -> dict[str, Any]:
        return request

    def select(self, request: dict[str, Any], available: list[Coin]) -> list[Coin]:
        """Largest coins first until the payments and the fee budget are covered."""
        need = _paid(request) + self.fee_budget
        chosen: list[Coin] = []
        for coin in sorted(available, key=lambda c: (-c.value, c.outpoint)):
            if sum(c.value for c in chosen) >= need:
                break
            chosen.append(coin)
        have = sum(c.value for c in chosen)
        if have < need:
            raise TxRejected(f"insufficient funds: paying {_paid(request)} needs {need} with the fee budget, "
                             f"the wallet's unreserved coins hold {have}", reverted=False)
        return chosen

    async def sign(self, request: dict[str, Any], domain: Any, fees: dict[str, int] | None) -> SignedTx:
        """Spends every outpoint of ``domain``: all versions of an intent share inputs."""
        inputs = tuple(sorted(domain))
        if not inputs:
            raise ValueError("a UTXO transaction needs the intent's reserved outpoints, got none")
        fee = int(fees["fee"]) if fees else self.fee
        change = sum(self.chain.output(op)[1] for op in inputs) - _paid(request) - fee
        if change < 0:
            raise TxRejected(f"fee {fee} exceeds what the reserved inputs leave", reverted=False)
        paid = tuple((str(to), int(value)) for to, value in request["outputs"])
        outputs = paid + (((self.wallet, change),) if change >= DUST else ())
        tx = FakeTx(inputs, outputs, self.wallet)
        return SignedTx(tx.raw, tx.txid, {"fee": fee})

    def bump_fees(self, fees: dict[str, int], factor: float) -> dict[str, int]:
        if fees["fee"] >= self.fee_budget:
            raise TxRejected(f"fee budget exhausted: the last version pays {fees['fee']}, the budget is "
                             f"{self.fee_budget}", reverted=False)
        raised = max(fees["fee"] + self.chain.incremental_fee, math.ceil(fees["fee"] * factor))
        return {"fee": min(raised, self.fee_budget)}

    # --- coins ----------------------------------------------------------------------

    async def coins(self, owner: str) -> list[Coin]:
        return sorted((Coin(op, v) for op, (a, v) in self.chain.utxos().items() if a == owner),
                      key=lambda c: c.outpoint)

    async def spender(self, outpoint: str) -> str | None:
        return self.chain.spender(outpoint)

    async def conflicting(self, outpoint: str) -> str | None:
        return self.chain.conflicting(outpoint)

    # --- broadcasting and reading ---------------------------------------------------

    async def broadcast(self, raw: bytes) -> BroadcastResult:
        return self.chain.submit(raw)

    async def receipt(self, tx_hash: str) -> Receipt | None:
        found = self.chain.location(tx_hash)
        if found is None:
            return None
        block, index = found
        tx = self.chain.txs[tx_hash]
        return Receipt(tx_hash=tx_hash, block_number=block.number, block_hash=block.hash, status=1,
                       effective_fee=self.chain.fee(tx), position=index,
                       extra={"inputs": list(tx.inputs), "outputs": [list(o) for o in tx.outputs]})

    async def in_mempool(self, tx_hash: str) -> bool:
        return tx_hash in self.chain.mempool

    async def head(self) -> Header:
        block = self.chain.block_at(self.chain.height)
        assert block is not None
        return block.header

    async def header_at(self, number: int) -> Header | None:
        block = self.chain.block_at(number)
        return None if block is None else block.header

    async def block_tx_hashes(self, block_hash: str) -> list[str]:
        block = self.chain.blocks.get(block_hash)
        return [] if block is None else list(block.txids)

    async def tagged_number(self, tag: str) -> int | None:
        return None  # see ``finality_kinds``

    async def aclose(self) -> None:
        return None
