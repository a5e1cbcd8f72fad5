"""``EvmChain``: chainflow's adapter for any EVM JSON-RPC node (a ``ChainAdapter`` and
a ``NonceSource``: an account chain's conflict domain is the sender's nonce).

Stateless towards the engine: it keeps only caches that are safe to lose (the chain
id, whether the chain has a base fee, ABIs seen in ``prepare``, the transaction hashes
of blocks whose headers it fetched: a block hash fixes the block's content, so the
head follower needs no second call for a header it just read).  Every durable
decision (nonces, which bytes to re-send, when to bump) belongs to the engine; this
class answers questions and signs what it is told to sign.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from chainflow.chain.adapter import (
    BroadcastOutcome,
    BroadcastResult,
    EndpointError,
    Header,
    Receipt,
    SignedTx,
    Simulation,
    TxRejected,
)
from chainflow.clock import to_seconds

from . import fees as fee_market
from .abi import AbiRegistry
from .classify import classify
from .errors import (
    ChainIdMismatch,
    RpcError,
    RpcUnavailable,
    SignerError,
    TxInvalid,
    TxReverted,
)
from .request import prepare as prepare_request
from .revert import decode_revert, is_revert, revert_data
from .rpc import Rpc, RpcTarget
from .signer import Signer
from .values import checksum, hex_lower, quantity

GAP_FILL_GAS = 21_000
FINALITY_TAGS = frozenset({"finalized", "safe"})
_REMEMBERED_BLOCKS = 256


@dataclass(frozen=True, kw_only=True)
class EvmReceipt(Receipt, family="evm"):
    """An EVM receipt: the chain-neutral fields plus what only an account chain has."""

    gas_used: int
    nonce: int


def _header(block: Mapping[str, Any]) -> Header:
    return Header(
        number=quantity(block["number"]),
        hash=hex_lower(block["hash"]),
        parent_hash=hex_lower(block["parentHash"]),
        timestamp=quantity(block["timestamp"]),
    )


def _tx_hashes(block: Mapping[str, Any]) -> list[str]:
    return [hex_lower(t if isinstance(t, (str, bytes)) else t["hash"]) for t in block.get("transactions") or []]


class EvmChain:
    """Talks to one EVM chain through one node, submitting from one signer.

    ``rpc`` is a URL (plain JSON-RPC on a keep-alive session, no automatic retries)
    or any web3 provider / ``Web3`` / ``AsyncWeb3``.  ``abis`` are contract
    ABIs whose events and custom errors receipts should decode even in a process that
    never prepared a call to them (a tracker on another host, a worker after restart).
    ``max_fee_per_gas`` is the fee budget in wei: the most any version offers per gas
    (``maxFeePerGas``, or ``gasPrice`` on a chain without a base fee); a fee spike is
    followed up to it and no further, and the submission is then flagged stuck.
    """

    # a pre-merge node has no tags: ``tagged_number`` then answers None and a tagged
    # policy waits, as it would for a tag lagging far behind
    finality_kinds = frozenset({"confirmations"}) | FINALITY_TAGS

    def __init__(
        self,
        name: str,
        rpc: RpcTarget,
        signer: Signer,
        *,
        chain_id: int | None = None,
        gas_headroom: float = 1.2,
        priority_fee: int | None = None,
        max_fee_per_gas: int | None = None,
        fee_history_blocks: int = 10,
        timeout: float = 10.0,
        abis: Iterable[Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("EvmChain needs a non-empty name: it keys the engine's nonce table")
        if not hasattr(signer, "address") or not callable(getattr(signer, "sign_transaction", None)):
            raise TypeError("signer must provide .address and .sign_transaction(tx)")
        if gas_headroom < 1:
            raise ValueError(f"gas_headroom must be at least 1.0, got {gas_headroom!r}")
        if chain_id is not None and (isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0):
            raise ValueError(f"chain {name!r}: chain_id must be a positive int, got {chain_id!r}")
        if isinstance(fee_history_blocks, bool) or not isinstance(fee_history_blocks, int) or fee_history_blocks < 1:
            raise ValueError(f"chain {name!r}: fee_history_blocks must be an int of at least 1, "
                             f"got {fee_history_blocks!r}")
        timeout = to_seconds(timeout, f"chain {name!r}: timeout", positive=True)
        self.name = name
        self.signer = signer
        self._sender = checksum(signer.address)  # asked for on every submit
        self.rpc = Rpc(rpc, timeout=timeout)
        self.abis = AbiRegistry()
        self.abis.learn_all(abis or [])
        self._configured_chain_id = chain_id
        self._chain_id: int | None = None
        self._headroom_permille = round(gas_headroom * 1000)
        self._fees = fee_market.FeeMarket(self.rpc, history_blocks=fee_history_blocks, priority_fee=priority_fee,
                                          max_fee=max_fee_per_gas)
        self._block_txs: OrderedDict[str, list[str]] = OrderedDict()

    def __repr__(self) -> str:
        return f"EvmChain({self.name!r}, sender={self.signer.address}, rpc={self.rpc!r})"

    # --- requests ---------------------------------------------------------------

    def sender(self) -> str:
        return self._sender

    def prepare(self, tx: Any) -> dict[str, Any]:
        return prepare_request(tx, self.abis)

    def gap_filler(self, sender: str) -> dict[str, Any]:
        return {"to": checksum(sender), "value": 0, "data": "0x", "gas": GAP_FILL_GAS,
                "contract": None, "abi_ref": None}

    def _call_object(self, request: Mapping[str, Any]) -> dict[str, Any]:
        return {"from": self.sender(), "to": request["to"], "value": hex(int(request["value"])),
                "data": request["data"]}

    async def estimate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Raises ``TxReverted`` (with the decoded reason) when the call reverts now, and
        ``TxInvalid`` when the sender holds less than the value it sends.  Geth refuses
        such an estimate itself ("insufficient funds"); anvil estimates it, and the
        payment would take a nonce no version of it can use until a top-up, holding the
        sender's later ones.  So the balance is asked in the same exchange (only for a
        transfer of value) and every node refuses it alike, before a nonce is bound."""
        if request.get("gas"):
            return request
        value = int(request["value"])
        calls: list[tuple[str, list[Any]]] = [("eth_estimateGas", [self._call_object(request)])]
        if value:
            calls.append(("eth_getBalance", [self.sender(), "latest"]))
        try:
            answers = await self.rpc.call_all(*calls)
        except RpcError as exc:
            if is_revert(exc.code, exc.message):
                data = revert_data(exc.data)
                raise TxReverted(decode_revert(data, exc.message, self.abis),
                                 data=None if data is None else "0x" + data.hex()) from None
            if "insufficient funds" in exc.message.lower():
                raise TxInvalid(exc.message) from None
            raise
        if value and quantity(answers[1]) < value:
            raise TxInvalid(f"insufficient funds: {self.sender()} holds {quantity(answers[1])} wei on chain "
                            f"{self.name!r}, the transaction sends {value} wei")
        return {**request, "gas": -(-quantity(answers[0]) * self._headroom_permille // 1000)}

    # --- replay (``chainflow.chain.adapter.Simulator``) ----------------------------

    def describe(self, request: dict[str, Any]) -> dict[str, Any]:
        plain_fields = {"to": request["to"], "value": int(request["value"]), "data": request["data"]}
        decoded = self.abis.decode_call(bytes.fromhex(str(request["data"])[2:]))
        if decoded is None:
            return plain_fields
        function, args = decoded
        return {"to": request["to"], "value": int(request["value"]), "function": function, "args": args}

    async def simulate(self, request: dict[str, Any], block_number: int) -> Simulation:
        """``eth_call`` from this adapter's sender at ``block_number``: the state that
        block left, with no nonce used and nothing signed."""
        try:
            data = await self.rpc.call("eth_call", self._call_object(request), hex(block_number))
        except RpcError as exc:
            if is_revert(exc.code, exc.message):
                return Simulation(block_number, False, decode_revert(revert_data(exc.data), exc.message, self.abis))
            raise
        return Simulation(block_number, True, str(data))

    # --- signing and sending ----------------------------------------------------

    async def chain_id(self) -> int:
        """The node's chain id, read once and checked against the configured one; the
        tracker checks it again with every head (``head``)."""
        if self._chain_id is None:
            self._chain_id = self._checked(await self.rpc.call("eth_chainId"))
        return self._chain_id

    def _checked(self, answer: Any) -> int:
        """The chain id the node answered, refused unless it is the configured one, or,
        none being configured, the one it answered before."""
        actual = quantity(answer)
        expected = self._configured_chain_id if self._configured_chain_id is not None else self._chain_id
        if expected is not None and actual != expected:
            raise ChainIdMismatch(self.name, expected, actual, seen=self._configured_chain_id is None)
        return actual

    async def sign(self, request: dict[str, Any], nonce: int, fees: dict[str, int] | None) -> SignedTx:
        """Signs exactly ``fees`` when given (a replacement); prices the market otherwise."""
        if not isinstance(nonce, int) or isinstance(nonce, bool) or nonce < 0:
            raise ValueError(f"nonce must be a non-negative int, got {nonce!r}")
        if not request.get("gas"):
            request = await self.estimate(request)
        fees = dict(fees) if fees is not None else await self._fees.quote()
        budget = self._fees.max_fee
        offered = fees.get("gas_price", fees.get("max_fee_per_gas"))
        if budget is not None and offered is not None and offered > budget:
            raise TxRejected(f"a fee of {offered} wei per gas exceeds the max_fee_per_gas {budget} wei of chain "
                             f"{self.name!r}", reverted=False)
        tx: dict[str, Any] = {
            "to": checksum(request["to"]),
            "value": int(request["value"]),
            "data": request["data"],
            "gas": int(request["gas"]),
            "nonce": nonce,
            "chainId": await self.chain_id(),
        }
        if "gas_price" in fees:
            tx["gasPrice"] = int(fees["gas_price"])
        else:
            tx.update(type=2, maxFeePerGas=int(fees["max_fee_per_gas"]),
                      maxPriorityFeePerGas=int(fees["max_priority_fee_per_gas"]))
        try:
            signed = self.signer.sign_transaction(tx)
            raw, tx_hash = await signed if inspect.isawaitable(signed) else signed
        except SignerError as exc:
            raise TxInvalid(str(exc)) from None
        return SignedTx(bytes(raw), hex_lower(tx_hash), {k: int(v) for k, v in fees.items()})

    def bump_fees(self, fees: dict[str, int], factor: float) -> dict[str, int]:
        return fee_market.bump(fees, factor, self._fees.max_fee)

    async def broadcast(self, raw: bytes) -> BroadcastResult:
        try:
            await self.rpc.call("eth_sendRawTransaction", "0x" + bytes(raw).hex())
        except RpcError as exc:
            return BroadcastResult(classify(exc.message), exc.message)
        except (RpcUnavailable, EndpointError) as exc:
            # a redirect or 4xx is a misconfiguration, but these bytes are signed and
            # may be out there from an earlier broadcast: failing the step now could
            # fail a payment that gets mined; the tracker keeps re-broadcasting instead
            # (a wrong URL is caught before signing, by the calls that precede it)
            return BroadcastResult(BroadcastOutcome.UNKNOWN, str(exc))
        return BroadcastResult(BroadcastOutcome.ACCEPTED)

    # --- reading ----------------------------------------------------------------

    async def receipt(self, tx_hash: str) -> EvmReceipt | None:
        # the transaction (its nonce, the fee fields) in the same exchange: the tracker
        # asks this for every transaction of ours in each new block
        raw, tx = await self.rpc.call_all(("eth_getTransactionReceipt", [tx_hash]),
                                          ("eth_getTransactionByHash", [tx_hash]))
        if not raw or raw.get("blockHash") is None or raw.get("blockNumber") is None:
            return None
        if not tx or tx.get("blockHash") is None:
            return None  # reorged out between the two calls: ask again later
        status = quantity(raw.get("status", 1))
        gas_used = quantity(raw["gasUsed"])
        price = quantity(raw.get("effectiveGasPrice") or tx.get("gasPrice") or 0)
        # OP-stack rollups charge the L1 data fee on top and report it in the receipt
        l1_fee = quantity(raw["l1Fee"]) if raw.get("l1Fee") is not None else 0
        reason = await self._revert_reason(tx, raw["blockNumber"]) if status == 0 else None
        index = raw.get("transactionIndex")
        return EvmReceipt(
            tx_hash=hex_lower(raw["transactionHash"]),
            block_number=quantity(raw["blockNumber"]),
            block_hash=hex_lower(raw["blockHash"]),
            status=status,
            gas_used=gas_used,
            effective_fee=gas_used * price + l1_fee,
            position=None if index is None else quantity(index),
            nonce=quantity(tx["nonce"]),
            logs=[self.abis.decode_log(log) for log in raw.get("logs") or []],
            revert_reason=reason,
        )

    async def _revert_reason(self, tx: Mapping[str, Any], block_number: Any) -> str:
        """Replays the call against the state at the end of its block (eth_call).

        Approximate by nature: the tx ran mid-block, so a transaction later in the same
        block can change the outcome.  Node answers other than a revert (pruned state,
        unsupported) yield a note instead of an error, because the receipt is journaled.
        """
        call = {"from": tx.get("from"), "to": tx.get("to"), "value": tx.get("value", "0x0"),
                "data": tx.get("input", tx.get("data", "0x")), "gas": tx.get("gas")}
        block = block_number if isinstance(block_number, str) else hex(block_number)
        try:
            await self.rpc.call("eth_call", {k: v for k, v in call.items() if v is not None}, block)
        except RpcError as exc:
            if is_revert(exc.code, exc.message):
                return decode_revert(revert_data(exc.data), exc.message, self.abis)
            return f"reverted (replay failed: {exc.message})"
        return "reverted (the call succeeds when replayed; likely out of gas or state-dependent)"

    async def in_mempool(self, tx_hash: str) -> bool:
        tx = await self.rpc.call("eth_getTransactionByHash", tx_hash)
        return bool(tx) and tx.get("blockHash") is None

    async def pending_nonce(self, sender: str) -> int:
        return quantity(await self.rpc.call("eth_getTransactionCount", checksum(sender), "pending"))

    async def latest_nonce(self, sender: str) -> int:
        return quantity(await self.rpc.call("eth_getTransactionCount", checksum(sender), "latest"))

    async def head(self) -> Header:
        # the chain id with every head, asked in the same exchange: a URL serving another
        # chain, from the start or once a node was replaced behind it, would otherwise
        # read as a reorg of every stored header
        answer, block = await asyncio.gather(self.rpc.call("eth_chainId"),
                                             self.rpc.call("eth_getBlockByNumber", "latest", False))
        self._chain_id = self._checked(answer)
        if not block:
            raise RpcError("eth_getBlockByNumber", 0, "node returned no latest block")
        return self._remember(block)

    async def header_at(self, number: int) -> Header | None:
        if number < 0:
            return None
        block = await self.rpc.call("eth_getBlockByNumber", hex(number), False)
        return self._remember(block) if block else None

    async def block_tx_hashes(self, block_hash: str) -> list[str]:
        known = self._block_txs.get(hex_lower(block_hash))
        if known is not None:
            return list(known)
        block = await self.rpc.call("eth_getBlockByHash", block_hash, False)
        return _tx_hashes(block) if block else []

    def _remember(self, block: Mapping[str, Any]) -> Header:
        header = _header(block)
        self._block_txs.pop(header.hash, None)
        self._block_txs[header.hash] = _tx_hashes(block)
        while len(self._block_txs) > _REMEMBERED_BLOCKS:
            self._block_txs.popitem(last=False)
        return header

    async def tagged_number(self, tag: str) -> int | None:
        if tag not in FINALITY_TAGS:
            raise ValueError(f"unknown finality tag {tag!r}; expected one of {sorted(FINALITY_TAGS)}")
        try:
            block = await self.rpc.call("eth_getBlockByNumber", tag, False)
        except RpcError:
            return None  # pre-merge nodes reject the tag
        return quantity(block["number"]) if block else None

    async def aclose(self) -> None:
        await self.rpc.aclose()
