"""Contract ABIs the adapter has seen, indexed for decoding logs and custom errors.

Only a cache: it is filled from ``EvmChain(abis=...)`` and from every contract call
passed to ``prepare``.  A process that never ran ``prepare`` (a tracker leader on another
host, a worker after a restart) decodes only what ``abis=`` taught it, which is why
deployments should pass their contracts' ABIs there.

Events are looked up by emitting address first, then by topic0: ERC-20 and ERC-721
``Transfer`` share a topic0 but not their indexing, so a topic alone can pick the
wrong ABI (a wrong candidate fails to decode and the next one is tried).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from eth_abi import decode as abi_decode
from eth_utils import (
    event_abi_to_log_topic,
    function_abi_to_4byte_selector,
)
from eth_utils.abi import abi_to_signature, get_abi_input_types
from web3 import Web3
from web3.contract.contract import ContractEvent

from .values import checksum, plain

_W3 = Web3()  # no provider: only its codec is used, to build event decoders
Abi = Sequence[Mapping[str, Any]]
_REMEMBERED_ABIS = 256


def abi_ref(abi: Abi) -> str:
    """Short content hash naming an ABI in journaled requests (for diagnostics)."""
    canonical = json.dumps(list(abi), sort_keys=True, separators=(",", ":"), default=str)
    return "abi:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


class AbiRegistry:
    def __init__(self) -> None:
        self._by_address: dict[str, dict[str, list[ContractEvent]]] = {}  # address -> topic0 -> events
        self._by_topic: dict[str, list[ContractEvent]] = {}
        self._errors: dict[str, dict[str, Any]] = {}  # 0x-selector -> error ABI
        self._functions: dict[str, dict[str, Any]] = {}  # 0x-selector -> function ABI
        self._seen: set[str] = set()
        self._refs: dict[int, tuple[Abi, str]] = {}  # id(abi) -> (abi, abi_ref(abi))

    def learn(self, abi: Abi, address: str | None = None) -> str:
        """Index ``abi`` (optionally as the ABI of ``address``); returns its ``abi_ref``.

        Every submit to a contract hands in that contract's one ABI object: its ref (a
        hash of the whole ABI as JSON) is remembered by identity, the object kept."""
        known = self._refs.get(id(abi))
        if known is not None and known[0] is abi:
            ref = known[1]
        else:
            ref = abi_ref(abi)
            if len(self._refs) >= _REMEMBERED_ABIS:  # ABIs built afresh per call: nothing to remember
                self._refs.clear()
            self._refs[id(abi)] = (abi, ref)
        key = f"{ref}@{address.lower() if address else ''}"
        if key in self._seen:
            return ref
        self._seen.add(key)
        for item in abi:
            if item.get("type") == "event" and not item.get("anonymous"):
                topic = "0x" + event_abi_to_log_topic(dict(item)).hex()  # type: ignore[arg-type]
                event = _decoder(item)
                _add(self._by_topic.setdefault(topic, []), event)
                if address:
                    _add(self._by_address.setdefault(address.lower(), {}).setdefault(topic, []), event)
            elif item.get("type") in ("error", "function"):
                selector = "0x" + function_abi_to_4byte_selector(dict(item)).hex()  # type: ignore[arg-type]
                table = self._errors if item["type"] == "error" else self._functions
                table.setdefault(selector, dict(item))
        return ref

    def learn_all(self, abis: Iterable[Abi]) -> None:
        for abi in abis:
            self.learn(abi)

    def decode_log(self, log: Mapping[str, Any]) -> dict[str, Any]:
        """``{"event", "args", "address", "log_index"}`` when an ABI fits, else the raw
        ``topics`` and ``data`` (lowercase hex) with ``address`` and ``log_index``."""
        topics = [str(t).lower() for t in log.get("topics") or []]
        address = checksum(str(log["address"]))
        log_index = _quantity(log.get("logIndex", 0))
        base: dict[str, Any] = {"address": address, "log_index": log_index}
        data_hex = str(log.get("data") or "0x").lower()
        if topics:
            own = self._by_address.get(address.lower(), {}).get(topics[0], [])
            for event in [*own, *self._by_topic.get(topics[0], [])]:
                decoded = _try_decode(event, topics, data_hex, address, log_index)
                if decoded is not None:
                    return {"event": decoded[0], "args": decoded[1], **base}
        return {**base, "topics": topics, "data": data_hex}

    def custom_error(self, data: bytes) -> str | None:
        """``Name(arg, ...)`` for revert data matching a known custom error."""
        decoded = _decode_call(self._errors, data)
        if decoded is None:
            return None
        name, values = decoded
        return f"{name}(" + ", ".join(_show(v) for v in values.values()) + ")"

    def decode_call(self, data: bytes) -> tuple[str, dict[str, Any]] | None:
        """(function name, {argument: value}) for calldata of a known function."""
        return _decode_call(self._functions, data)


def _decode_call(known: Mapping[str, Mapping[str, Any]], data: bytes) -> tuple[str, dict[str, Any]] | None:
    """Selector and ABI-encoded arguments (calldata, custom-error revert data) decoded
    with the matching ABI, arguments by name (by position where unnamed)."""
    item = known.get("0x" + data[:4].hex())
    if item is None:
        return None
    types = get_abi_input_types(item)  # type: ignore[arg-type]
    try:
        values = abi_decode(types, data[4:])
    except Exception:  # noqa: BLE001 - payload does not match the ABI: caller shows raw data
        return None
    names = [i.get("name") or str(n) for n, i in enumerate(item.get("inputs", []))]
    return str(item["name"]), {name: checksum(v) if t == "address" else plain(v)
                               for name, t, v in zip(names, types, values)}


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) and not value.startswith("0x") else str(value)


def _shape(event: Mapping[str, Any]) -> tuple[str, tuple[bool, ...]]:
    return abi_to_signature(event), tuple(bool(i.get("indexed")) for i in event.get("inputs", []))  # type: ignore[arg-type]


def _decoder(event: Mapping[str, Any]) -> ContractEvent:
    """web3's public decoder for one event ABI (a contract holding just that event), so
    log decoding goes through ``ContractEvent.process_log`` rather than web3 internals."""
    return _W3.eth.contract(abi=[dict(event)]).events[event["name"]]


def _add(bucket: list[ContractEvent], event: ContractEvent) -> None:
    if _shape(event.abi) not in {_shape(e.abi) for e in bucket}:
        bucket.append(event)


def _quantity(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def _try_decode(
    event: ContractEvent, topics: list[str], data_hex: str, address: str, log_index: int
) -> tuple[str, dict[str, Any]] | None:
    try:
        decoded = event.process_log(
            {
                "topics": [bytes.fromhex(t[2:]) for t in topics],
                "data": bytes.fromhex(data_hex[2:]),
                "address": address,
                "logIndex": log_index,
                "transactionIndex": 0,
                "transactionHash": b"",
                "blockHash": b"",
                "blockNumber": 0,
            },
        )
    except Exception:  # noqa: BLE001 - ABI does not fit this log: try the next candidate
        return None
    return str(decoded["event"]), {str(k): plain(v) for k, v in decoded["args"].items()}
