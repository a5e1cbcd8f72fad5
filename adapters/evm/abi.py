"""Contract ABIs the adapter has seen, indexed for decoding logs and custom errors.

Only a cache: it is filled from ``EvmChain(abis=...)`` and from every contract call
passed to ``prepare``.  A process that never ran ``prepare`` (a tracker leader on another
host, a worker after a restart) decodes only what ``abis=`` taught it, which is why
deployments should pass their contracts' ABIs there.

Events are looked up by emitting address first, then by topic0: ERC-20 and ERC-721
``Transfer`` share a topic0 but not their indexing, so a topic alone can pick the
wrong ABI (a wrong candidate fails to decode and the next one is tried).

Logs are decoded as web3's ``ContractEvent.process_log`` (``get_event_data``) decodes
them, with everything that depends only on the ABI (types, names, which values are
addresses, which tuples get named) worked out once per event instead of per log.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import chain
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi.grammar import ABIType, TupleType, parse
from eth_utils import (
    event_abi_to_log_topic,
    function_abi_to_4byte_selector,
)
from eth_utils.abi import abi_to_signature, get_abi_input_names, get_abi_input_types
from web3 import Web3
from web3._utils.abi import exclude_indexed_event_inputs, get_indexed_event_inputs, normalize_event_input_types
from web3._utils.events import get_event_abi_types_for_decoding

from .values import checksum, plain

_CODEC = Web3().codec  # the codec web3 decodes event logs with
Abi = Sequence[Mapping[str, Any]]
Convert = Callable[[Any], Any]
_REMEMBERED_ABIS = 256


def abi_ref(abi: Abi) -> str:
    """Short content hash naming an ABI in journaled requests (for diagnostics)."""
    canonical = json.dumps(list(abi), sort_keys=True, separators=(",", ":"), default=str)
    return "abi:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


class AbiRegistry:
    def __init__(self) -> None:
        self._by_address: dict[str, dict[str, list[_Event]]] = {}  # address -> topic0 -> events
        self._by_topic: dict[str, list[_Event]] = {}
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
                event = _Event(dict(item))
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
                args = event.decode(topics, data_hex)
                if args is not None:
                    return {"event": str(event.abi["name"]), "args": args, **base}
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


def _add(bucket: list[_Event], event: _Event) -> None:
    if _shape(event.abi) not in {_shape(e.abi) for e in bucket}:
        bucket.append(event)


def _quantity(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


class _Event:
    """One event ABI, ready to decode logs exactly as ``get_event_data`` would, then
    ``plain``: indexed values from their topics (an indexed dynamic value as its
    32-byte hash), the rest from the data, addresses checksummed at any depth, tuples
    in the data as dicts named by their components.  An ABI web3 cannot decode any log
    with (an input without ``indexed``, no ``anonymous``, a name both indexed and not)
    has no plan and decodes nothing, as before."""

    __slots__ = ("_plan", "abi")

    def __init__(self, abi: Mapping[str, Any]) -> None:
        self.abi = abi
        try:
            self._plan: _Plan | None = _Plan(abi)
        except Exception:  # noqa: BLE001 - web3 raises on such an ABI for every log
            self._plan = None

    def decode(self, topics: list[str], data_hex: str) -> dict[str, Any] | None:
        """Arguments by name, or None when the log does not fit this ABI."""
        plan = self._plan
        if plan is None or len(topics) - 1 != len(plan.topic_types):
            return None
        try:
            topic_values = [_CODEC.decode([kind], bytes.fromhex(topic[2:]))[0]
                            for kind, topic in zip(plan.topic_types, topics[1:])]
            data_values = _CODEC.decode(plan.data_types, bytes.fromhex(data_hex[2:]))
        except Exception:  # noqa: BLE001 - ABI does not fit this log: try the next candidate
            return None
        return {str(name): convert(value) for name, convert, value in chain(
            zip(plan.topic_names, plan.topic_converts, topic_values),
            zip(plan.data_names, plan.data_converts, data_values))}


class _Plan:
    """What ``get_event_data`` derives from the event ABI alone, derived with its own
    helpers; raises where it would raise."""

    __slots__ = ("data_converts", "data_names", "data_types", "topic_converts", "topic_names", "topic_types")

    def __init__(self, event: Mapping[str, Any]) -> None:
        if "anonymous" not in event:  # web3 reads it (learn() skips the anonymous ones)
            raise KeyError("anonymous")
        topic_inputs = get_indexed_event_inputs(event)  # type: ignore[arg-type]
        data_inputs = list(normalize_event_input_types(exclude_indexed_event_inputs(event)))  # type: ignore[arg-type]
        self.topic_types = list(get_event_abi_types_for_decoding(
            list(normalize_event_input_types(topic_inputs))))
        self.topic_names: list[Any] = get_abi_input_names(
            {"name": event["name"], "type": "event", "inputs": topic_inputs})
        self.data_types = list(get_event_abi_types_for_decoding(data_inputs))
        self.data_names: list[Any] = [item["name"] for item in data_inputs]
        if set(self.topic_names) & set(self.data_names):
            raise ValueError("an argument name is both indexed and not")
        self.topic_converts = [_converter(parse(kind), None) for kind in self.topic_types]
        self.data_converts = [_converter(parse(kind), item) for kind, item in zip(self.data_types, data_inputs)]


def _converter(abi_type: ABIType, abi: Mapping[str, Any] | None) -> Convert:
    """How a decoded value of ``abi_type`` becomes what web3's normalizers (addresses
    checksummed), its naming of tuples by ``abi``'s components (event data only: no
    ``abi`` for topics) and ``plain`` made of it."""
    if abi_type.is_array:
        item = _converter(abi_type.item_type, abi)
        return lambda value: [item(v) for v in value]
    if isinstance(abi_type, TupleType):
        if abi is None:
            parts = [_converter(part, None) for part in abi_type.components]
            return lambda value: [convert(v) for convert, v in zip(parts, value)]
        components = abi["components"]
        names = [str(component["name"]) for component in components]
        named = [_converter(part, component) for part, component in zip(abi_type.components, components)]
        return lambda value: {name: convert(v) for name, convert, v in zip(names, named, value)}
    if abi_type.to_type_str() == "address":
        return checksum
    return plain
