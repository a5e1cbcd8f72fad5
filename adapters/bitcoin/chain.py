"""``BitcoinChain``: chainflow's adapter for a Bitcoin Core node (or a fork speaking the
same RPC, such as Litecoin Core 0.21): a ``ChainAdapter`` and a ``CoinSource``, so the
engine binds each payment to coins it reserves, and every signed version of the
payment spends all of them.

The node is used as a read-only index of the chain plus a broadcaster; it holds no
wallet and never sees a key.  The adapter signs locally from a ``DescriptorWallet``,
learns the wallet's coins with one ``scantxoutset`` and then block by block, walking
reorgs back (``coinview``), and needs ``-txindex`` to read any transaction by id
(receipts, the values of the inputs it spends).  What it keeps is safe to lose:
transactions and block contents by hash (immutable), and the coin view, rebuilt by a
scan after a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from bitcoin.core import CTransaction, b2lx, x

from chainflow.chain.adapter import (
    BroadcastOutcome,
    BroadcastResult,
    Coin,
    Header,
    Receipt,
    SignedTx,
    TxRejected,
)
from chainflow.clock import to_seconds

from . import fees as fee_math
from . import transaction
from .addresses import address_of, dust_limit, script_for
from .classify import classify
from .coinview import CoinView
from .errors import NodeMismatch, RpcError
from .networks import Network, network as network_named
from .rpc import BitcoinRpc
from .transaction import Prevout, parse_outpoint
from .values import payment_amount
from .wallet import DescriptorWallet

RPC_INVALID_ADDRESS_OR_KEY = -5  # "No such mempool or blockchain transaction", "Block not found"
RPC_INVALID_PARAMETER = -8  # "Block height out of range", "Scan already in progress"
SCAN_TRIES = 10  # another scantxoutset on the node (another worker): wait for it this many times
_CACHED_TXS = 2048
_TXID = re.compile("[0-9a-f]{64}")
_CACHED_BLOCKS = 256

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, kw_only=True)
class BitcoinReceipt(Receipt, family="bitcoin"):
    """A Bitcoin receipt: the chain-neutral fields plus the transaction's shape.

    ``output_index`` is the output paying the submission (0 for a single payment; a
    batched payment's own output, see ``BitcoinChain.member_receipt``); ``feerate`` is
    ``effective_fee * 1000 // vsize`` in sat/kvB; ``outputs`` are ``[address, sats]``
    (the script's hex where it has no address)."""

    output_index: int | None
    vsize: int
    feerate: int
    outputs: list[list[Any]]


def _remember(cache: OrderedDict[K, V], key: K, value: V, size: int) -> V:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)
    return value


def _header(raw: Mapping[str, Any]) -> Header:
    return Header(number=int(raw["height"]), hash=str(raw["hash"]),
                  parent_hash=str(raw.get("previousblockhash") or "0" * 64), timestamp=int(raw["time"]))


class BitcoinChain:
    """Pays from one wallet through one node.

    ``rpc`` is the node's URL with its credentials (``http://user:pass@host:port``);
    ``network`` one of ``networks.names()``; fee rates are sat/kvB (satoshi per 1000
    virtual bytes): ``fallback_feerate`` when the node has no estimate for
    ``fee_target`` blocks, ``max_feerate`` the most any version may pay, which is also
    what coin selection budgets for.  The wallet's first ``lookahead`` addresses are
    its coins' owners; the first one is ``sender()`` and receives change.
    ``spender_lookback`` bounds how many blocks ``spender`` walks back;
    ``rpc_connections`` how many calls are in flight to the node at once (see
    ``BitcoinRpc``: at most its ``-rpcworkqueue``).
    """

    # no finality tags on Bitcoin: a payout asking for Finalized() would never settle
    finality_kinds = frozenset({"confirmations"})

    def __init__(self, name: str, *, rpc: str, network: str, wallet: DescriptorWallet, fee_target: int = 6,
                 fallback_feerate: int = 10_000, max_feerate: int = 200_000, lookahead: int = 20,
                 spender_lookback: int = 144, timeout: float = 30.0, scan_timeout: float = 600.0,
                 rpc_connections: int = 8) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("BitcoinChain needs a non-empty name: it keys the engine's coin reservations")
        if not isinstance(wallet, DescriptorWallet):
            raise TypeError(f"wallet must be a DescriptorWallet, not {type(wallet).__name__}")
        self.network: Network = network_named(network)
        for what, value, low in (("fee_target", fee_target, 1), ("fallback_feerate", fallback_feerate,
                                 self.network.min_relay_feerate), ("max_feerate", max_feerate, fallback_feerate),
                                 ("lookahead", lookahead, 1), ("spender_lookback", spender_lookback, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"chain {name!r}: {what} must be an int of at least {low}, got {value!r}")
        timeout = to_seconds(timeout, f"chain {name!r}: timeout", positive=True)
        scan_timeout = to_seconds(scan_timeout, f"chain {name!r}: scan_timeout", positive=True)
        self.name = name
        self.rpc = BitcoinRpc(rpc, timeout=timeout, connections=rpc_connections)
        self.keyring = wallet.keyring(self.network, name, lookahead)
        self.fee_target, self.fallback_feerate, self.max_feerate = fee_target, fallback_feerate, max_feerate
        self.spender_lookback, self.scan_timeout = spender_lookback, scan_timeout
        self._checked = False
        self._txs: OrderedDict[str, CTransaction] = OrderedDict()
        self._block_txids: OrderedDict[str, list[str]] = OrderedDict()
        self._block_spends: OrderedDict[str, tuple[dict[tuple[str, int], str], int, str | None]] = OrderedDict()
        self._coins = CoinView(self.rpc, self._scan,
                               lambda script: self.keyring.index_of(bytes.fromhex(script)) is not None)

    def __repr__(self) -> str:
        return f"BitcoinChain({self.name!r}, network={self.network.name}, sender={self.sender()}, rpc={self.rpc!r})"

    # --- requests -----------------------------------------------------------------

    def sender(self) -> str:
        return self.keyring.addresses[0]

    def pay(self, address: str, *, sats: int) -> dict[str, Any]:
        """A payment of ``sats`` (an int) to ``address``: the ``tx`` of ``ctx.submit``.
        Checked now, so a bad address or amount fails where it is written."""
        self._payment(address, sats)
        return {"to": address, "sats": sats}

    def _payment(self, address: Any, sats: Any) -> tuple[bytes, int]:
        """(script, sats) of one payment; ``ValueError`` naming what is wrong."""
        script = script_for(address, self.network, self.name)
        value = payment_amount(sats, f"payment to {address}")
        dust = dust_limit(script, self.network)
        if value < dust:
            raise ValueError(f"payment of {value} sats to {address} is below the dust limit of {dust} sats for that "
                             f"output type on {self.network.name}: nodes would not relay it")
        return script, value

    def prepare(self, tx: Any) -> dict[str, Any]:
        if not isinstance(tx, dict) or set(tx) != {"to", "sats"}:
            raise ValueError(f"chain {self.name!r}: tx must be {self.name}.pay(address, sats=...), got {tx!r}")
        self._payment(tx["to"], tx["sats"])
        return {"outputs": [[tx["to"], tx["sats"]]]}

    def _payments(self, request: Mapping[str, Any]) -> list[tuple[bytes, int]]:
        outputs = request.get("outputs") if isinstance(request, Mapping) else None
        if not isinstance(outputs, list) or not outputs or not all(
                isinstance(o, (list, tuple)) and len(o) == 2 for o in outputs):
            raise ValueError(f"chain {self.name!r}: a request needs 'outputs' as a non-empty list of [address, sats], "
                             f"got {request!r}")
        return [self._payment(address, sats) for address, sats in outputs]

    def merge(self, requests: list[dict[str, Any]]) -> dict[str, Any]:
        """One request paying each of ``requests`` in order (change comes last): the
        engine's batching.  Each must be a single payment, so that the i-th output is
        the i-th request's (``member_receipt``); a fee rate already estimated for any
        of them is kept, the highest."""
        if not requests:
            raise ValueError(f"chain {self.name!r}: nothing to merge")
        outputs: list[list[Any]] = []
        for n, request in enumerate(requests):
            payments = self._payments(request)
            if len(payments) != 1:
                raise ValueError(f"chain {self.name!r}: request {n} to merge pays {len(payments)} outputs; only "
                                 f"single payments can be batched")
            outputs.append(list(request["outputs"][0]))
        merged: dict[str, Any] = {"outputs": outputs}
        rates = [int(r["feerate"]) for r in requests if "feerate" in r]
        if rates:
            merged["feerate"] = max(rates)
        return merged

    def member_receipt(self, receipt: Receipt, index: int) -> Receipt:
        """The receipt of the ``index``-th request of a ``merge``: the same
        transaction, with the output paying that request."""
        if not isinstance(receipt, BitcoinReceipt):
            raise TypeError(f"chain {self.name!r}: not a BitcoinReceipt: {type(receipt).__name__}")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(receipt.outputs):
            raise ValueError(f"chain {self.name!r}: transaction {receipt.tx_hash} has no output {index!r}")
        return dataclasses.replace(receipt, output_index=index)

    async def estimate(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` with the fee rate the market asks now; no coins are chosen here."""
        self._payments(request)
        return {**request, "feerate": await self._market_feerate()}

    async def _market_feerate(self) -> int:
        """``estimatesmartfee`` for ``fee_target`` blocks, else the fallback; never
        below the relay floor nor above ``max_feerate``."""
        estimated = fee_math.from_node(await self.rpc.call("estimatesmartfee", self.fee_target))
        rate = self.fallback_feerate if estimated is None else estimated
        return min(max(rate, self.network.min_relay_feerate), self.max_feerate)

    def select(self, request: dict[str, Any], available: list[Coin]) -> list[Coin]:
        return transaction.select(self._payments(request), available, self.keyring.scripts[0], self.max_feerate)

    async def sign(self, request: dict[str, Any], domain: Any, fees: dict[str, int] | None) -> SignedTx:
        """Spends every reserved outpoint of ``domain``; ``fees`` is ``{"feerate":
        sat/kvB}`` for a replacement, None to price from the market now."""
        payments = self._payments(request)
        if not isinstance(domain, (list, tuple)) or not domain:
            raise ValueError(f"chain {self.name!r}: a payment needs the intent's reserved outpoints, got {domain!r}")
        outpoints = sorted(set(domain), key=parse_outpoint)
        given = None if fees is None else fees.get("feerate") if isinstance(fees, Mapping) else fees
        if fees is not None and (isinstance(given, bool) or not isinstance(given, int) or given <= 0):
            raise ValueError(f"chain {self.name!r}: fees must hold an int 'feerate' (sat/kvB), got {fees!r}")
        feerate = await self._market_feerate() if given is None else int(given)
        if feerate > self.max_feerate:
            raise TxRejected(f"fee rate {feerate} sat/kvB exceeds the max_feerate {self.max_feerate} sat/kvB of "
                             f"chain {self.name!r}", reverted=False)
        await self._check_node()
        inputs = [await self._prevout(op) for op in outpoints]
        return transaction.sign(self.keyring, self.network, inputs, payments, feerate)

    def bump_fees(self, fees: dict[str, int], factor: float) -> dict[str, int]:
        return {"feerate": fee_math.bump(int(fees["feerate"]), factor,
                                         incremental=self.network.incremental_relay_feerate, cap=self.max_feerate)}

    async def _prevout(self, outpoint: str) -> Prevout:
        txid, index = parse_outpoint(outpoint)
        tx = await self._tx(txid)
        if tx is None or index >= len(tx.vout):
            raise TxRejected(f"reserved input {outpoint} does not exist on chain {self.name!r}", reverted=False)
        out = tx.vout[index]
        return Prevout(outpoint, int(out.nValue), bytes(out.scriptPubKey))

    async def _tx(self, txid: str) -> CTransaction | None:
        """A transaction by id (mempool, or any block with ``-txindex``), cached."""
        known = self._txs.get(txid)
        if known is not None:
            return known
        raw = await self._lookup("getrawtransaction", txid, False)
        return None if raw is None else _remember(self._txs, txid, CTransaction.deserialize(x(raw)), _CACHED_TXS)

    async def _lookup(self, method: str, *params: Any, missing: int = RPC_INVALID_ADDRESS_OR_KEY) -> Any:
        """The result of a call looking something up; None when the node answers
        that it has no such thing (error code ``missing``)."""
        try:
            return await self.rpc.call(method, *params)
        except RpcError as exc:
            if exc.code == missing:
                return None
            raise

    async def _located(self, txid: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The verbose transaction and the header of the active-chain block holding
        it; None when no such block (mempool, unknown, or a block a reorg orphaned,
        which ``-txindex`` may still point into)."""
        tx = await self._lookup("getrawtransaction", txid, True)
        if tx is None or not tx.get("blockhash"):
            return None
        header = await self.rpc.call("getblockheader", tx["blockhash"])
        return (tx, header) if int(header.get("confirmations", 0)) >= 1 else None

    async def _check_node(self) -> None:
        """Once: the node serves this chain's network and indexes transactions."""
        if self._checked:
            return
        genesis = await self.rpc.call("getblockhash", 0)
        if genesis != self.network.genesis:
            info = await self.rpc.call("getblockchaininfo")
            raise NodeMismatch(f"chain {self.name!r} is configured for {self.network.name} but its node at "
                               f"{self.rpc.redacted} serves another network ({info.get('chain')!r}, genesis "
                               f"{genesis})")
        try:
            indexes = await self.rpc.call("getindexinfo")
        except RpcError:
            indexes = None  # before 0.21: no way to ask; getrawtransaction will tell
        if isinstance(indexes, dict) and "txindex" not in indexes:
            raise NodeMismatch(f"chain {self.name!r}: the node at {self.rpc.redacted} runs without -txindex, which "
                               f"the adapter needs to read transactions by id (receipts, input values)")
        self._checked = True

    # --- coins ------------------------------------------------------------------

    async def coins(self, owner: str) -> list[Coin]:
        """The wallet's confirmed, spendable outputs in the active chain, by outpoint:
        a ``scantxoutset`` on first use, then each new block once (``CoinView``)."""
        if owner != self.sender():
            raise ValueError(f"chain {self.name!r} holds the coins of {self.sender()}, not of {owner!r}")
        await self._check_node()
        return await self._coins.coins()

    async def _scan(self) -> dict[str, Any]:
        descriptors = [f"addr({a})" for a in self.keyring.addresses]
        for _ in range(SCAN_TRIES):
            try:
                scan = await self.rpc.call("scantxoutset", "start", descriptors, timeout=self.scan_timeout)
            except RpcError as exc:
                if exc.code != RPC_INVALID_PARAMETER or "in progress" not in exc.message:
                    raise
                await asyncio.sleep(0.5)
                continue
            if not scan.get("success"):
                raise RpcError("scantxoutset", 0, "the scan did not complete")
            return dict(scan)
        raise RpcError("scantxoutset", RPC_INVALID_PARAMETER, f"another scan kept the node busy {SCAN_TRIES} times")

    async def spender(self, outpoint: str) -> str | None:
        """The active chain's transaction spending ``outpoint``, None while unspent
        there (or while the transaction creating it is not in the active chain).

        Found by walking back from the tip, at most ``spender_lookback`` blocks and
        never below the block creating the outpoint.  Spent deeper than that, the
        answer is a sentence saying so instead of a txid: the engine only uses it in
        the message failing the intent, after checking its own versions' receipts."""
        txid, index = parse_outpoint(outpoint)
        if await self.rpc.call("gettxout", txid, index, False) is not None:
            return None
        located = await self._located(txid)
        if located is None:
            return None
        created = int(located[1]["height"])
        block_hash: str | None = await self.rpc.call("getbestblockhash")
        for _ in range(self.spender_lookback):
            if block_hash is None:
                return None
            spends, height, parent = await self._spends(block_hash)
            if (txid, index) in spends:
                return spends[(txid, index)]
            if height <= created:
                # searched down to the coin's own block: a reorg between the two reads
                # took the spend back (ours, say, now in the mempool): unspent there
                return None
            block_hash = parent
        return f"a transaction more than {self.spender_lookback} blocks below the tip (not searched further)"

    async def conflicting(self, outpoint: str) -> str | None:
        """The active chain's spend of an input of the transaction creating ``outpoint``,
        when that transaction is not in the active chain: it then never can be while
        the spend stays, nor ``outpoint`` exist (a payout's version that a reorg replaced
        with another, its change already reserved).  Read from ``-txindex``, which keeps
        a transaction of an orphaned block; a coinbase's outputs die with their block
        and come back with it, so nothing conflicts with them.  The spend is found as by
        ``spender``, a sentence instead of a txid below its lookback."""
        txid, index = parse_outpoint(outpoint)
        if await self.rpc.call("gettxout", txid, index, False) is not None or await self._located(txid) is not None:
            return None
        tx = await self._tx(txid)
        if tx is None or tx.is_coinbase():
            return None
        for vin in tx.vin:
            spend = await self.spender(f"{b2lx(vin.prevout.hash)}:{vin.prevout.n}")
            if spend is not None:
                return spend
        return None

    async def _spends(self, block_hash: str) -> tuple[dict[tuple[str, int], str], int, str | None]:
        """Which outpoints a block spends (and by which txid), its height and parent;
        kept by block hash, which fixes a block's content."""
        known = self._block_spends.get(block_hash)
        if known is not None:
            return known
        block = await self.rpc.call("getblock", block_hash, 2)
        spends = {(str(vin["txid"]), int(vin["vout"])): str(tx["txid"])
                  for tx in block.get("tx") or [] for vin in tx.get("vin") or [] if "txid" in vin}
        entry = (spends, int(block["height"]), block.get("previousblockhash"))
        return _remember(self._block_spends, block_hash, entry, max(self.spender_lookback, _CACHED_BLOCKS))

    # --- broadcasting -------------------------------------------------------------

    async def broadcast(self, raw: bytes) -> BroadcastResult:
        """``sendrawtransaction`` with the node's own fee cap off (``max_feerate`` is
        enforced before signing).  Core accepts bytes already in its mempool without a
        word, so the mempool is asked first.  Network failures raise."""
        try:
            txid = b2lx(CTransaction.deserialize(bytes(raw)).GetTxid())
        except Exception as exc:  # noqa: BLE001 - any decoding failure: the node would refuse it too
            return BroadcastResult(BroadcastOutcome.REJECTED, f"not a transaction: {type(exc).__name__}: {exc}")
        if await self.in_mempool(txid):
            return BroadcastResult(BroadcastOutcome.ALREADY_KNOWN, "txn-already-in-mempool")
        try:
            await self.rpc.call("sendrawtransaction", bytes(raw).hex(), 0)
        except RpcError as exc:
            return BroadcastResult(classify(exc.code, exc.message), exc.message)
        return BroadcastResult(BroadcastOutcome.ACCEPTED)

    # --- reading ------------------------------------------------------------------

    async def receipt(self, tx_hash: str) -> BitcoinReceipt | None:
        if not _TXID.fullmatch(tx_hash):  # what ``spender`` says of a spend below its lookback
            return None
        located = await self._located(tx_hash)
        if located is None:
            return None
        raw, header = located
        block_hash = str(header["hash"])
        tx = _remember(self._txs, tx_hash, CTransaction.deserialize(x(raw["hex"])), _CACHED_TXS)
        txids = await self.block_tx_hashes(block_hash)
        paid = sum(int(out.nValue) for out in tx.vout)
        fee = 0
        if not tx.is_coinbase():
            for vin in tx.vin:
                prev = await self._tx(b2lx(vin.prevout.hash))
                if prev is None:
                    raise RpcError("getrawtransaction", RPC_INVALID_ADDRESS_OR_KEY,
                                   f"input {b2lx(vin.prevout.hash)}:{vin.prevout.n} of {tx_hash} not found")
                fee += int(prev.vout[vin.prevout.n].nValue)
            fee -= paid
        size = int(raw["vsize"])
        return BitcoinReceipt(
            tx_hash=tx_hash, block_number=int(header["height"]), block_hash=str(block_hash), status=1,
            effective_fee=fee, position=txids.index(tx_hash) if tx_hash in txids else None,
            output_index=0, vsize=size, feerate=fee * 1000 // size,
            outputs=[[address_of(bytes(out.scriptPubKey), self.network) or bytes(out.scriptPubKey).hex(),
                      int(out.nValue)] for out in tx.vout])

    async def in_mempool(self, tx_hash: str) -> bool:
        return await self._lookup("getmempoolentry", tx_hash) is not None

    async def head(self) -> Header:
        await self._check_node()
        return _header(await self.rpc.call("getblockheader", await self.rpc.call("getbestblockhash")))

    async def header_at(self, number: int) -> Header | None:
        if number < 0:
            return None
        block_hash = await self._lookup("getblockhash", number, missing=RPC_INVALID_PARAMETER)  # above the tip
        return None if block_hash is None else _header(await self.rpc.call("getblockheader", block_hash))

    async def block_tx_hashes(self, block_hash: str) -> list[str]:
        known = self._block_txids.get(block_hash)
        if known is None:
            block = await self._lookup("getblock", block_hash, 1)
            if block is None:
                return []
            known = _remember(self._block_txids, block_hash, [str(t) for t in block.get("tx") or []], _CACHED_BLOCKS)
        return list(known)

    async def tagged_number(self, tag: str) -> int | None:
        return None  # see ``finality_kinds``

    async def aclose(self) -> None:
        await self.rpc.aclose()
