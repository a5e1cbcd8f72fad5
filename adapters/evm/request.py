"""Turning a user's transaction description into the plain request the engine journals.

The request is written to the database before anything is signed and re-read by other
processes (the tracker re-signs it for fee bumps), so it must be self-contained plain
data: checksum ``to``, int ``value``, hex ``data``, optional int ``gas`` and, for
contract calls, the ``contract`` address and an ``abi_ref`` naming the ABI used (for
diagnostics; decoding uses the adapter's ABI registry).  Validation happens here, inside
the user's step, so bad input fails with a ``ValueError`` naming the field before any
nonce is involved.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
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
    try:
        data = call._encode_transaction_data()  # web3 v8 still names it privately
    except Exception as exc:  # noqa: BLE001 - web3 raises several types for bad arguments
        raise ValueError(f"cannot encode arguments of contract call {call.fn_name!r}: {exc}") from None
    ref = abis.learn(call.contract_abi or [call.abi], address)
    return {"to": address, "value": 0, "data": str(data).lower(), "gas": None,
            "contract": address, "abi_ref": ref}


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
    if is_checksum_formatted_address(to) and not is_checksum_address(to):
        # mixed case claims a checksum: a wrong one means a mistyped address
        raise ValueError(f"tx field 'to' has an invalid EIP-55 checksum: {to!r}")
    return to_checksum_address(to)


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
