"""JSON-RPC method table for the in-process EVM.

Parameters arrive in wire format and results leave in wire format, so the
HTTP layer stays a dumb transport and this table is the one place defining
what the in-process node claims to support. Method names follow geth and,
for devnet controls, anvil, so one client works against both devnets.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Any

from eth_account import Account
from eth_utils.address import to_canonical_address
from eth_utils.crypto import keccak

from devnet import evm_format as fmt
from devnet.errors import RpcError
from devnet.evm_chain import EvmChain
from devnet.evm_exec import ZERO_ADDRESS, CallRequest

Handler = Callable[[list[Any]], Any]

METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


CLIENT_VERSION = (
    f"chainflow-devnet/py-evm-{_version('py-evm')}/eth-tester-{_version('eth-tester')}"
    f"/python{sys.version_info.major}.{sys.version_info.minor}"
)


# -- parameter decoding -------------------------------------------------------


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise RpcError(INVALID_PARAMS, f"expected quantity, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 16) if value.startswith(("0x", "0X")) else int(value)
        except ValueError:
            pass
    raise RpcError(INVALID_PARAMS, f"invalid quantity {value!r}")


def _bytes(value: Any) -> bytes:
    if not isinstance(value, str) or not value.startswith(("0x", "0X")):
        raise RpcError(INVALID_PARAMS, f"expected 0x-prefixed hex data, got {value!r}")
    try:
        return bytes.fromhex(value[2:])
    except ValueError as exc:
        raise RpcError(INVALID_PARAMS, f"invalid hex data {value[:20]!r}") from exc


def _address(value: Any) -> bytes:
    raw = _bytes(value)
    if len(raw) != 20:
        raise RpcError(INVALID_PARAMS, f"invalid address {value!r}")
    return raw


def _hash(value: Any) -> bytes:
    raw = _bytes(value)
    if len(raw) != 32:
        raise RpcError(INVALID_PARAMS, f"invalid hash {value!r}")
    return raw


def _param(params: list[Any], index: int, default: Any = None) -> Any:
    return params[index] if len(params) > index and params[index] is not None else default


class EvmRpc:
    """Dispatches JSON-RPC calls onto an `EvmChain` under its lock."""

    def __init__(self, chain: EvmChain) -> None:
        self.chain = chain
        self._interval_stop = threading.Event()
        self._interval_thread: threading.Thread | None = None
        self._methods: dict[str, Handler] = {
            "web3_clientVersion": lambda p: CLIENT_VERSION,
            "web3_sha3": lambda p: fmt.data(keccak(_bytes(p[0]))),
            "net_version": lambda p: str(self.chain.chain_id),
            "net_listening": lambda p: True,
            "net_peerCount": lambda p: "0x0",
            "eth_chainId": lambda p: fmt.quantity(self.chain.chain_id),
            "eth_syncing": lambda p: False,
            "eth_accounts": lambda p: [fmt.address(a) for a in self.chain.dev_addresses()],
            "eth_blockNumber": lambda p: fmt.quantity(self.chain.latest_number()),
            "eth_gasPrice": lambda p: fmt.quantity(self.chain.next_base_fee() + self.chain.priority_fee),
            "eth_maxPriorityFeePerGas": lambda p: fmt.quantity(self.chain.priority_fee),
            "eth_feeHistory": self._fee_history,
            "eth_getBalance": lambda p: fmt.quantity(
                self.chain.state_at(self._ref(_param(p, 1, "latest"))).get_balance(_address(p[0]))
            ),
            "eth_getCode": lambda p: fmt.data(
                self.chain.state_at(self._ref(_param(p, 1, "latest"))).get_code(_address(p[0]))
            ),
            "eth_getStorageAt": lambda p: fmt.word(
                self.chain.state_at(self._ref(_param(p, 2, "latest"))).get_storage(_address(p[0]), _int(p[1]))
            ),
            "eth_getTransactionCount": self._transaction_count,
            "eth_getBlockByNumber": self._block_by_number,
            "eth_getBlockByHash": self._block_by_hash,
            "eth_getBlockTransactionCountByNumber": self._tx_count_by_number,
            "eth_getBlockTransactionCountByHash": self._tx_count_by_hash,
            "eth_getBlockReceipts": self._block_receipts,
            "eth_getTransactionByHash": self._transaction_by_hash,
            "eth_getTransactionByBlockNumberAndIndex": self._tx_by_number_and_index,
            "eth_getTransactionByBlockHashAndIndex": self._tx_by_hash_and_index,
            "eth_getTransactionReceipt": self._receipt,
            "eth_getRawTransactionByHash": self._raw_transaction,
            "eth_sendRawTransaction": lambda p: fmt.data(self.chain.submit(_bytes(p[0]))),
            "eth_sendTransaction": self._send_transaction,
            "eth_call": lambda p: fmt.data(
                self.chain.call(self._call_request(p[0]), self._ref(_param(p, 1, "latest")))
            ),
            "eth_estimateGas": lambda p: fmt.quantity(
                self.chain.estimate_gas(self._call_request(p[0]), self._ref(_param(p, 1, "latest")))
            ),
            "eth_getLogs": self._logs,
            "evm_mine": self._evm_mine,
            "anvil_mine": self._anvil_mine,
            "evm_snapshot": lambda p: fmt.quantity(self.chain.snapshot()),
            "evm_revert": lambda p: self.chain.revert(_int(p[0])),
            "evm_setAutomine": self._set_automine,
            "anvil_setAutomine": self._set_automine,
            "anvil_getAutomine": lambda p: self.chain.automine,
            "evm_setIntervalMining": lambda p: self.set_interval_mining(float(_int(p[0]))),
            "anvil_setIntervalMining": lambda p: self.set_interval_mining(float(_int(p[0]))),
            "anvil_reorg": self._reorg,
            "anvil_rollback": lambda p: self.chain.rollback(_int(_param(p, 0, 1))),
            "anvil_dropTransaction": lambda p: self._drop(p),
            "anvil_dropAllTransactions": lambda p: self.chain.pool.clear(),
            "anvil_setBalance": lambda p: self.chain.set_balance(_address(p[0]), _int(p[1])),
            "txpool_content": self._txpool_content,
            "txpool_status": self._txpool_status,
        }

    def methods(self) -> list[str]:
        return sorted(self._methods)

    def dispatch(self, method: str, params: list[Any]) -> Any:
        handler = self._methods.get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, f"the method {method} does not exist/is not available")
        with self.chain.lock:
            try:
                return handler(params)
            except (IndexError, KeyError, TypeError) as exc:
                raise RpcError(INVALID_PARAMS, f"invalid params for {method}: {exc}") from exc

    # -- helpers ---------------------------------------------------------------

    def _ref(self, value: Any) -> str | int:
        """Block reference: tag, quantity, or EIP-1898 object."""
        if isinstance(value, dict):
            if "blockHash" in value:
                block = self.chain.block_by_hash(_hash(value["blockHash"]))
                if block is None:
                    raise RpcError(-32000, "header for hash not found")
                return int(block.header.block_number)
            return self._ref(value.get("blockNumber", "latest"))
        if isinstance(value, str) and not value.startswith(("0x", "0X")):
            return value
        return _int(value)

    def _call_request(self, obj: dict[str, Any]) -> CallRequest:
        def opt(key: str) -> int | None:
            return _int(obj[key]) if obj.get(key) is not None else None

        payload = obj.get("input", obj.get("data"))
        return CallRequest(
            sender=_address(obj["from"]) if obj.get("from") else ZERO_ADDRESS,
            to=_address(obj["to"]) if obj.get("to") else b"",
            gas=opt("gas"),
            gas_price=opt("gasPrice"),
            max_fee_per_gas=opt("maxFeePerGas"),
            max_priority_fee_per_gas=opt("maxPriorityFeePerGas"),
            value=opt("value") or 0,
            data=_bytes(payload) if payload else b"",
        )

    # -- accounts & fees ---------------------------------------------------------

    def _transaction_count(self, params: list[Any]) -> str:
        address = _address(params[0])
        ref = self._ref(_param(params, 1, "latest"))
        if ref == "pending":
            return fmt.quantity(self.chain.pending_nonce(address))
        return fmt.quantity(self.chain.state_at(ref).get_nonce(address))

    def _fee_history(self, params: list[Any]) -> dict[str, Any]:
        count = _int(params[0])
        if not 1 <= count <= 1024:
            raise RpcError(INVALID_PARAMS, "blockCount must be between 1 and 1024")
        newest = self.chain.resolve(self._ref(_param(params, 1, "latest")))
        if newest is None:
            raise RpcError(-32000, "request beyond head block")
        percentiles = [float(p) for p in _param(params, 2, [])]
        history = self.chain.fee_history(count, newest, percentiles)
        out: dict[str, Any] = {
            "oldestBlock": fmt.quantity(history.oldest_block),
            "baseFeePerGas": [fmt.quantity(v) for v in history.base_fees],
            "gasUsedRatio": history.gas_used_ratios,
        }
        if history.rewards is not None:
            out["reward"] = [[fmt.quantity(v) for v in row] for row in history.rewards]
        return out

    # -- blocks ------------------------------------------------------------------

    def _block_by_number(self, params: list[Any]) -> dict[str, Any] | None:
        ref = self._ref(params[0])
        full = bool(_param(params, 1, False))
        if ref == "pending":
            return fmt.format_block(self.chain.pending_block(), full_transactions=full, pending=True)
        number = self.chain.resolve(ref)
        if number is None:
            return None
        return fmt.format_block(self.chain.block(number), full_transactions=full)

    def _block_by_hash(self, params: list[Any]) -> dict[str, Any] | None:
        block = self.chain.block_by_hash(_hash(params[0]))
        if block is None:
            return None
        return fmt.format_block(block, full_transactions=bool(_param(params, 1, False)))

    def _block_for_ref(self, value: Any) -> Any | None:
        ref = self._ref(value)
        if ref == "pending":
            return self.chain.pending_block()
        number = self.chain.resolve(ref)
        return None if number is None else self.chain.block(number)

    def _tx_count_by_number(self, params: list[Any]) -> str | None:
        block = self._block_for_ref(params[0])
        return None if block is None else fmt.quantity(len(block.transactions))

    def _tx_count_by_hash(self, params: list[Any]) -> str | None:
        block = self.chain.block_by_hash(_hash(params[0]))
        return None if block is None else fmt.quantity(len(block.transactions))

    def _block_receipts(self, params: list[Any]) -> list[dict[str, Any]] | None:
        value = params[0]
        if isinstance(value, str) and len(value) == 66:
            block = self.chain.block_by_hash(_hash(value))
        else:
            block = self._block_for_ref(value)
        if block is None:
            return None
        return fmt.format_receipts(block, self.chain.receipts(block))

    # -- transactions --------------------------------------------------------------

    def _transaction_by_hash(self, params: list[Any]) -> dict[str, Any] | None:
        tx_hash = _hash(params[0])
        entry = self.chain.pool.get(tx_hash)
        if entry is not None:
            return fmt.format_transaction(entry.tx)
        found = self.chain.find_transaction(tx_hash)
        if found is None:
            return None
        block, index = found
        return self._mined_tx(block, index)

    @staticmethod
    def _mined_tx(block: Any, index: int) -> dict[str, Any]:
        header = block.header
        return fmt.format_transaction(
            block.transactions[index],
            block_hash=header.hash,
            block_number=int(header.block_number),
            index=index,
            base_fee=getattr(header, "base_fee_per_gas", None),
        )

    def _tx_by_number_and_index(self, params: list[Any]) -> dict[str, Any] | None:
        block = self._block_for_ref(params[0])
        index = _int(params[1])
        if block is None or index >= len(block.transactions):
            return None
        return self._mined_tx(block, index)

    def _tx_by_hash_and_index(self, params: list[Any]) -> dict[str, Any] | None:
        block = self.chain.block_by_hash(_hash(params[0]))
        index = _int(params[1])
        if block is None or index >= len(block.transactions):
            return None
        return self._mined_tx(block, index)

    def _receipt(self, params: list[Any]) -> dict[str, Any] | None:
        found = self.chain.find_transaction(_hash(params[0]))
        if found is None:
            return None
        block, index = found
        return fmt.format_receipts(block, self.chain.receipts(block))[index]

    def _raw_transaction(self, params: list[Any]) -> str | None:
        raw = self.chain.raw_transaction(_hash(params[0]))
        return None if raw is None else fmt.data(raw)

    def _send_transaction(self, params: list[Any]) -> str:
        """Sign with a dev key on the node's behalf, like anvil's unlocked accounts."""
        obj = params[0]
        request = self._call_request(obj)
        key = self.chain.dev_key(request.sender)
        if key is None:
            raise RpcError(-32000, f"unknown account 0x{request.sender.hex()}")
        tx: dict[str, Any] = {
            "chainId": self.chain.chain_id,
            "nonce": _int(obj["nonce"])
            if obj.get("nonce") is not None
            else self.chain.pending_nonce(request.sender),
            "value": request.value,
            "data": request.data,
            "gas": request.gas if request.gas is not None else self.chain.estimate_gas(request, "latest"),
        }
        if request.to:
            tx["to"] = fmt.address(request.to)
        if request.gas_price is not None:
            tx["gasPrice"] = request.gas_price
        else:
            tip = request.max_priority_fee_per_gas
            tip = self.chain.priority_fee if tip is None else tip
            tx["maxPriorityFeePerGas"] = tip
            tx["maxFeePerGas"] = (
                request.max_fee_per_gas
                if request.max_fee_per_gas is not None
                else 2 * self.chain.next_base_fee() + tip
            )
        raw = Account.sign_transaction(tx, key).raw_transaction
        return fmt.data(self.chain.submit(bytes(raw)))

    def _drop(self, params: list[Any]) -> None:
        self.chain.drop(_hash(params[0]))

    # -- logs ----------------------------------------------------------------------

    def _logs(self, params: list[Any]) -> list[dict[str, Any]]:
        criteria = params[0] if params else {}
        if criteria.get("blockHash"):
            block = self.chain.block_by_hash(_hash(criteria["blockHash"]))
            if block is None:
                raise RpcError(-32000, "unknown block")
            blocks = [block]
        else:
            first = self.chain.resolve(self._ref(criteria.get("fromBlock") or "latest"))
            last = self.chain.resolve(self._ref(criteria.get("toBlock") or "latest"))
            if first is None:
                return []
            if last is None:
                last = self.chain.latest_number()
            if first > last:
                raise RpcError(INVALID_PARAMS, "invalid block range params")
            blocks = list(self.chain.iter_blocks(first, last))
        addresses = criteria.get("address")
        address_set = (
            None
            if addresses is None
            else {_address(a) for a in (addresses if isinstance(addresses, list) else [addresses])}
        )
        topic_filters = [
            None
            if t is None
            else {_hash(x) for x in (t if isinstance(t, list) else [t]) if x is not None} or None
            for t in (criteria.get("topics") or [])
        ]
        out: list[dict[str, Any]] = []
        for block in blocks:
            if not block.transactions or block.header.bloom == 0:
                continue
            for receipt in fmt.format_receipts(block, self.chain.receipts(block)):
                out.extend(log for log in receipt["logs"] if _log_matches(log, address_set, topic_filters))
        return out

    # -- devnet controls -------------------------------------------------------------

    def _evm_mine(self, params: list[Any]) -> str:
        # ganache accepts a timestamp or {"blocks": n}; only the count matters here.
        opts = _param(params, 0)
        count = _int(opts.get("blocks", 1)) if isinstance(opts, dict) else 1
        self.chain.mine(count)
        return "0x0"

    def _anvil_mine(self, params: list[Any]) -> None:
        self.chain.mine(_int(_param(params, 0, 1)))

    def _set_automine(self, params: list[Any]) -> None:
        self.chain.automine = bool(params[0])
        if self.chain.automine and len(self.chain.pool):
            self.chain.mine(1)  # like eth-tester/anvil: switching on flushes what is pending

    def _reorg(self, params: list[Any]) -> None:
        depth = _int(params[0])
        replay: list[tuple[bytes, int]] = []
        for item in _param(params, 1, []):
            raw, offset = item
            if not isinstance(raw, str):
                raise RpcError(INVALID_PARAMS, "only raw signed transactions can be replayed in-process")
            replay.append((_bytes(raw), _int(offset)))
        self.chain.reorg(depth, replay)

    def _txpool_content(self, params: list[Any]) -> dict[str, Any]:
        pending, queued = self.chain.pool.split(self.chain.state_nonce)

        def group(entries: list[Any]) -> dict[str, dict[str, Any]]:
            out: dict[str, dict[str, Any]] = {}
            for entry in entries:
                sender = "0x" + entry.sender.hex()
                out.setdefault(sender, {})[str(entry.nonce)] = fmt.format_transaction(entry.tx)
            return out

        return {"pending": group(pending), "queued": group(queued)}

    def _txpool_status(self, params: list[Any]) -> dict[str, str]:
        pending, queued = self.chain.pool.split(self.chain.state_nonce)
        return {"pending": fmt.quantity(len(pending)), "queued": fmt.quantity(len(queued))}

    # -- interval mining ----------------------------------------------------------------

    def set_interval_mining(self, seconds: float) -> None:
        """Mine every `seconds` on a daemon thread; 0 stops it (automine setting is untouched).

        Never joins the old thread: this runs under the chain lock, which
        that thread may be waiting for. It re-checks its stop flag under the
        lock instead, so it cannot mine after being replaced.
        """
        self._interval_stop.set()
        if seconds <= 0:
            self._interval_thread = None
            return
        stop = threading.Event()
        self._interval_stop = stop

        def run() -> None:
            while not stop.wait(seconds):
                with self.chain.lock:
                    if stop.is_set():
                        return
                    self.chain.mine(1)

        self._interval_thread = threading.Thread(target=run, name="devnet-interval-miner", daemon=True)
        self._interval_thread.start()

    def shutdown(self) -> None:
        """Stop background mining; call without holding the chain lock."""
        self._interval_stop.set()
        thread, self._interval_thread = self._interval_thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


def _log_matches(log: dict[str, Any], addresses: set[bytes] | None, topics: list[set[bytes] | None]) -> bool:
    if addresses is not None and to_canonical_address(log["address"]) not in addresses:
        return False
    log_topics = log["topics"]
    for position, wanted in enumerate(topics):
        if wanted is None:
            continue
        if position >= len(log_topics) or bytes.fromhex(log_topics[position][2:]) not in wanted:
            return False
    return True
