"""``EvmChain``: chainflow's ``ChainAdapter`` for any EVM JSON-RPC node.

Stateless towards the engine: it remembers only caches that are safe to lose (chain
id, contract ABIs seen in ``prepare`` for decoding logs and reverts).
"""

from __future__ import annotations

from typing import Any

from eth_utils import is_address, to_checksum_address
from web3 import AsyncHTTPProvider, Web3
from web3._utils.events import get_event_data
from web3.contract.base_contract import BaseContractFunction

from chainflow.adapter import BroadcastOutcome, BroadcastResult, Header, Receipt, SignedTx, TxRejected

from . import fees as fee_market
from .errors import classify, revert_reason
from .rpc import Rpc, RpcError, TransportError
from .signer import Signer

_CODEC = Web3().codec


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def _header(block: dict[str, Any]) -> Header:
    return Header(_int(block["number"]), block["hash"].lower(), block["parentHash"].lower(), _int(block["timestamp"]))


class EvmChain:
    def __init__(
        self,
        name: str,
        rpc: str | AsyncHTTPProvider,
        signer: Signer,
        *,
        chain_id: int | None = None,
        gas_headroom: float = 1.2,
        priority_fee: int | None = None,
        fee_history_blocks: int = 10,
        timeout: float = 10.0,
        abis: list[list[dict[str, Any]]] | None = None,
    ) -> None:
        if not name:
            raise ValueError("EvmChain needs a non-empty name")
        self.name = name
        self.rpc = Rpc(rpc, timeout)
        self.signer = signer
        self._chain_id = chain_id
        self._headroom = int(round(gas_headroom * 1000))
        self._priority = priority_fee
        self._history_blocks = fee_history_blocks
        self._events: dict[str, dict[str, Any]] = {}  # topic0 -> event ABI
        for abi in abis or []:
            self._learn(abi)

    def __repr__(self) -> str:
        return f"EvmChain({self.name!r}, sender={self.signer.address})"

    # --- requests -------------------------------------------------------------

    def sender(self) -> str:
        return self.signer.address

    def _learn(self, abi: list[dict[str, Any]]) -> None:
        from eth_utils import event_abi_to_log_topic

        for item in abi:
            if item.get("type") == "event" and not item.get("anonymous"):
                self._events["0x" + event_abi_to_log_topic(item).hex()] = item  # type: ignore[arg-type]

    def prepare(self, tx: Any) -> dict[str, Any]:
        if isinstance(tx, BaseContractFunction):
            if not tx.address:
                raise ValueError("contract call has no address: build it from a deployed contract")
            self._learn(list(tx.contract_abi))
            return {"to": to_checksum_address(tx.address), "value": 0, "data": tx._encode_transaction_data(),
                    "gas": None}
        if not isinstance(tx, dict):
            raise ValueError(f"tx must be a contract call or a dict with 'to', got {type(tx).__name__}")
        unknown = set(tx) - {"to", "value", "data", "gas"}
        if unknown:
            raise ValueError(f"tx has unsupported field(s) {sorted(unknown)}")
        to = tx.get("to")
        if not isinstance(to, str) or not is_address(to):
            raise ValueError(f"tx field 'to' is not an address: {to!r}")
        value = tx.get("value", 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"tx field 'value' must be a non-negative int number of wei, got {value!r}")
        data = tx.get("data", "0x")
        if isinstance(data, bytes):
            data = "0x" + data.hex()
        if not isinstance(data, str) or not data.startswith("0x"):
            raise ValueError("tx field 'data' must be 0x-prefixed hex or bytes")
        gas = tx.get("gas")
        if gas is not None and (not isinstance(gas, int) or gas <= 0):
            raise ValueError(f"tx field 'gas' must be a positive int, got {gas!r}")
        return {"to": to_checksum_address(to), "value": value, "data": data, "gas": gas}

    def _call_params(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"from": self.sender(), "to": request["to"], "value": hex(request["value"]), "data": request["data"]}

    async def estimate(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("gas"):
            return request
        try:
            gas = _int(await self.rpc.call("eth_estimateGas", self._call_params(request)))
        except RpcError as exc:
            if exc.code == 3 or "revert" in exc.message.lower():
                raise TxRejected(revert_reason(exc.data, exc.message)) from None
            if "insufficient funds" in exc.message.lower():
                raise TxRejected(exc.message, reverted=False) from None
            raise
        return {**request, "gas": gas * self._headroom // 1000}

    def gap_filler(self, sender: str) -> dict[str, Any]:
        return {"to": to_checksum_address(sender), "value": 0, "data": "0x", "gas": 21_000}

    # --- signing and sending --------------------------------------------------

    async def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = _int(await self.rpc.call("eth_chainId"))
        return self._chain_id

    async def sign(self, request: dict[str, Any], nonce: int, fees: dict[str, int] | None) -> SignedTx:
        if not request.get("gas"):
            request = await self.estimate(request)
        if fees is None:
            fees = await fee_market.price(self.rpc, blocks=self._history_blocks, priority=self._priority)
        tx: dict[str, Any] = {
            "to": request["to"], "value": request["value"], "data": request["data"], "gas": request["gas"],
            "nonce": nonce, "chainId": await self.chain_id(),
        }
        if "gas_price" in fees:
            tx["gasPrice"] = fees["gas_price"]
        else:
            tx.update(type=2, maxFeePerGas=fees["max_fee_per_gas"],
                      maxPriorityFeePerGas=fees["max_priority_fee_per_gas"])
        try:
            raw, tx_hash = self.signer.sign_transaction(tx)
        except (TypeError, ValueError) as exc:
            raise TxRejected(f"cannot sign: {type(exc).__name__}: {exc}", reverted=False) from None
        return SignedTx(raw, tx_hash.lower(), dict(fees))

    def bump_fees(self, fees: dict[str, int], factor: float) -> dict[str, int]:
        return fee_market.bump(fees, factor)

    async def broadcast(self, raw: bytes) -> BroadcastResult:
        try:
            await self.rpc.call("eth_sendRawTransaction", "0x" + raw.hex())
        except RpcError as exc:
            return BroadcastResult(classify(exc.message), exc.message)
        except TransportError as exc:
            return BroadcastResult(BroadcastOutcome.UNKNOWN, str(exc))
        return BroadcastResult(BroadcastOutcome.ACCEPTED)

    # --- reading --------------------------------------------------------------

    async def receipt(self, tx_hash: str) -> Receipt | None:
        raw = await self.rpc.call("eth_getTransactionReceipt", tx_hash)
        if not raw or raw.get("blockHash") is None:
            return None
        tx = await self.rpc.call("eth_getTransactionByHash", tx_hash) or {}
        status = _int(raw.get("status", "0x1"))
        gas_used = _int(raw["gasUsed"])
        price = _int(raw.get("effectiveGasPrice") or tx.get("gasPrice") or 0)
        reason = await self._revert_reason(tx, raw["blockNumber"]) if status == 0 and tx else None
        return Receipt(
            tx_hash=raw["transactionHash"].lower(), block_number=_int(raw["blockNumber"]),
            block_hash=raw["blockHash"].lower(), status=status, gas_used=gas_used,
            effective_fee=gas_used * price, nonce=_int(tx.get("nonce", 0)),
            logs=[self._decode_log(log) for log in raw.get("logs", [])], revert_reason=reason,
        )

    async def _revert_reason(self, tx: dict[str, Any], block: str) -> str:
        params = {"from": tx.get("from"), "to": tx.get("to"), "value": tx.get("value", "0x0"),
                  "data": tx.get("input", "0x"), "gas": tx.get("gas")}
        try:
            await self.rpc.call("eth_call", params, block)
        except RpcError as exc:
            return revert_reason(exc.data, exc.message)
        return "reverted (the call succeeds when replayed; likely out of gas)"

    def _decode_log(self, log: dict[str, Any]) -> dict[str, Any]:
        topics = log.get("topics") or []
        event = self._events.get(topics[0].lower()) if topics else None
        base = {"address": log.get("address"), "log_index": _int(log.get("logIndex", "0x0"))}
        if event is not None:
            try:
                decoded = get_event_data(_CODEC, event, {**log, "topics": [bytes.fromhex(t[2:]) for t in topics],
                                                         "data": bytes.fromhex(log["data"][2:])})
                args = {k: ("0x" + v.hex() if isinstance(v, bytes) else v) for k, v in decoded["args"].items()}
                return {**base, "event": decoded["event"], "args": args}
            except Exception:  # noqa: BLE001 - an ABI mismatch leaves the log raw
                pass
        return {**base, "topics": [t.lower() for t in topics], "data": log.get("data")}

    async def in_mempool(self, tx_hash: str) -> bool:
        tx = await self.rpc.call("eth_getTransactionByHash", tx_hash)
        return bool(tx) and tx.get("blockNumber") is None

    async def pending_nonce(self, sender: str) -> int:
        return _int(await self.rpc.call("eth_getTransactionCount", sender, "pending"))

    async def latest_nonce(self, sender: str) -> int:
        return _int(await self.rpc.call("eth_getTransactionCount", sender, "latest"))

    async def head(self) -> Header:
        return _header(await self.rpc.call("eth_getBlockByNumber", "latest", False))

    async def header_at(self, number: int) -> Header | None:
        block = await self.rpc.call("eth_getBlockByNumber", hex(number), False)
        return _header(block) if block else None

    async def block_tx_hashes(self, block_hash: str) -> list[str]:
        block = await self.rpc.call("eth_getBlockByHash", block_hash, False)
        return [h.lower() for h in block["transactions"]] if block else []

    async def tagged_number(self, tag: str) -> int | None:
        try:
            block = await self.rpc.call("eth_getBlockByNumber", tag, False)
        except RpcError:
            return None
        return _int(block["number"]) if block else None

    async def aclose(self) -> None:
        await self.rpc.aclose()
