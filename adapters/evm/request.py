"""Turning a user's transaction description into the plain request the engine journals.

The request is written to the database before anything is signed and re-read by other
processes (the tracker re-signs it for fee bumps), so it must be self-contained plain
data: checksum ``to``, int ``value``, hex ``data``, optional int ``gas`` and, for
contract calls, the ``contract`` address and an ``abi_ref`` naming the ABI used (for
diagnostics; decoding uses the adapter's ABI registry).  Validation happens here, inside
the user's step, so bad input fails with a ``ValueError`` naming the field before any
nonce is involved.

Encoding a contract call is most of ``prepare``'s cost, and a workflow that parked
(waiting for confirmations) and resumed replays its steps, calling ``prepare`` again
with an equal call: the encoded calldata of recent calls is remembered, keyed by what it
is a pure function of (see ``_call_key``).  A new call whose arguments are all of
elementary types, in the form web3 would pass on unchanged, is encoded by the codec
directly (``_calldata``): web3's checks and normalisers cost ~14x the encoding itself.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any

from eth_utils import (
    is_address,
    is_checksum_address,
    is_checksum_formatted_address,
    to_checksum_address,
)
from web3.contract.base_contract import BaseContractFunction

from .abi import AbiRegistry
from .values import checksum

REQUEST_FIELDS = frozenset({"to", "value", "data", "gas"})
_HEX = re.compile(r"^0x([0-9a-fA-F]{2})*$")
_HEX_TEXT = re.compile(r"0x[0-9a-fA-F]*")
_REMEMBERED_CALLS = 4096
_encoded: OrderedDict[Hashable, str] = OrderedDict()  # _call_key -> calldata, least recently used first
_ELEMENTARY = re.compile(r"(u?int|bytes)[0-9]*|address|bool")
_input_types: dict[str, tuple[str, ...] | None] = {}  # function signature -> its elementary input types


def prepare(tx: Any, abis: AbiRegistry) -> dict[str, Any]:
    if isinstance(tx, BaseContractFunction):
        return _from_contract_call(tx, abis)
    if isinstance(tx, Mapping):
        return _from_mapping(tx)
    raise ValueError(
        "tx must be a web3 contract function call (contract.functions.f(...)) or a dict "
        f"with 'to', 'value', 'data', 'gas'; got {type(tx).__name__}"
    )


def _from_contract_call(call: BaseContractFunction, abis: AbiRegistry) -> dict[str, Any]:
    if not call.address:
        raise ValueError(f"contract call {call.fn_name!r} has no address: build it from a deployed contract")
    address = checksum(str(call.address))
    key = _call_key(call)
    data = _encoded.pop(key, None) if key is not None else None
    if data is None:
        data = _calldata(call)
    if key is not None:
        _encoded[key] = data  # (again) the most recently used
        if len(_encoded) > _REMEMBERED_CALLS:
            _encoded.popitem(last=False)
    ref = abis.learn(call.contract_abi or [call.abi], address)
    return {"to": address, "value": 0, "data": data, "gas": None, "contract": address, "abi_ref": ref}


def _calldata(call: BaseContractFunction) -> str:
    """web3's calldata for ``call``, lowercase.  Arguments web3 would normalise (an ENS
    name, hex text for bytes, bytes for a string, a lowercase address it refuses) or
    of composite types take web3's own path, and so does any the codec refuses: its
    error names what is wrong."""
    types = _elementary_inputs(call)
    arguments = call.arguments
    if types is not None and len(types) == len(arguments) and all(map(_passed_as_is, types, arguments)):
        try:
            return str(call.selector).lower() + call.w3.codec.encode(types, arguments).hex()
        except Exception:  # noqa: BLE001, S110 - web3's path below raises the error to show
            pass
    try:
        return str(call._encode_transaction_data()).lower()  # web3 v8 still names it privately
    except Exception as exc:  # noqa: BLE001 - web3 raises several types for bad arguments
        raise ValueError(f"cannot encode arguments of contract call {call.fn_name!r}: {exc}") from None


def _elementary_inputs(call: BaseContractFunction) -> tuple[str, ...] | None:
    signature = str(call.signature)
    if signature not in _input_types:
        types = tuple(str(i.get("type")) for i in (call.abi or {}).get("inputs", []))
        _input_types[signature] = types if all(_ELEMENTARY.fullmatch(t) for t in types) else None
    return _input_types[signature]


def _passed_as_is(abi_type: str, value: Any) -> bool:
    """Whether web3's normalisers hand ``value`` to the codec unchanged."""
    kind = type(value)
    if abi_type == "address":
        return kind is str and is_checksum_address(value)
    if abi_type == "bool":
        return kind is bool
    return kind is (bytes if abi_type.startswith("bytes") else int)


def _call_key(call: BaseContractFunction) -> Hashable | None:
    """What web3's encoding of ``call`` depends on, or None when that is not plain data.

    The calldata is a function of the codec (its strictness), the function signature
    (selector and argument types) and the normalized arguments (not of the contract's
    address, which the request takes from the call each time), provided no argument is
    an ENS name (resolved through the node at encoding time) or mutable.  Arguments are
    keyed with their types: ``1``, ``True`` and ``1.0`` are equal in Python but not to
    the encoder."""
    codec = getattr(call.w3, "codec", None)
    arguments = _frozen(call.arguments)
    if codec is None or arguments is None:
        return None
    return codec, call.signature, arguments


def _frozen(value: Any) -> Hashable | None:
    """``value`` with the type of every part, when it is made of tuples, ints, bools,
    bytes and 0x-hex strings (never ENS names); None otherwise."""
    kind = type(value)
    if kind is tuple:
        parts = tuple(_frozen(v) for v in value)
        return None if None in parts else (tuple, parts)
    if kind in (int, bool, bytes) or (kind is str and _HEX_TEXT.fullmatch(value)):
        return kind, value
    return None


def _from_mapping(tx: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(tx) - REQUEST_FIELDS
    if unknown:
        raise ValueError(f"tx has unsupported field(s) {sorted(map(str, unknown))}; allowed: {sorted(REQUEST_FIELDS)}")
    return {
        "to": _address(tx.get("to")),
        "value": _value(tx.get("value", 0)),
        "data": _data(tx.get("data", "0x")),
        "gas": _gas(tx.get("gas")),
        "contract": None,
        "abi_ref": None,
    }


def _address(to: Any) -> str:
    if isinstance(to, (bytes, bytearray)) and len(to) == 20:
        return to_checksum_address(bytes(to))
    if not isinstance(to, str) or not is_address(to):
        raise ValueError(f"tx field 'to' must be a 0x address, got {to!r}")
    checksummed = checksum(to)
    if is_checksum_formatted_address(to) and checksummed != to:
        # mixed case claims a checksum: a wrong one means a mistyped address
        raise ValueError(f"tx field 'to' has an invalid EIP-55 checksum: {to!r}")
    return checksummed


def _value(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"tx field 'value': value must be an int number of wei (>= 0), got {value!r}")
    if value >= 2**256:
        raise ValueError("tx field 'value' does not fit in uint256")
    return value


def _data(data: Any) -> str:
    if isinstance(data, (bytes, bytearray)):
        return "0x" + bytes(data).hex()
    if not isinstance(data, str) or not _HEX.match(data):
        raise ValueError("tx field 'data' must be bytes or 0x-prefixed hex with whole bytes")
    return data.lower()


def _gas(gas: Any) -> int | None:
    if gas is None:
        return None
    if not isinstance(gas, int) or isinstance(gas, bool) or gas < 21_000:
        raise ValueError(f"tx field 'gas' must be an int of at least 21000, got {gas!r}")
    return gas
