"""Converting node and ABI values into the plain data the engine journals.

The engine stores everything through its JSON codec and replays it later, so what
crosses the adapter boundary must be ints, str, bool, lists and str-keyed dicts:
no HexBytes, no AttributeDict, no floats.  Hashes and byte strings become lowercase
0x-hex; addresses keep their EIP-55 checksum so they compare equal to user input.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from eth_utils import to_checksum_address


def quantity(value: Any) -> int:
    """A JSON-RPC quantity ("0x1a") or an int (in-process providers) as an int."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not a quantity")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value, 16)
    raise TypeError(f"not a quantity: {type(value).__name__}")


def hex_lower(value: Any) -> str:
    """A hash or byte string as lowercase 0x-hex."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "0x" + bytes(value).hex()
    text = str(value).lower()
    return text if text.startswith("0x") else "0x" + text


def plain(value: Any) -> Any:
    """Recursively journal-able form of a decoded ABI value."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "0x" + bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    raise TypeError(f"cannot journal a decoded value of type {type(value).__name__}")


@functools.lru_cache(maxsize=4096)
def checksum(address: str) -> str:
    """``to_checksum_address``, remembered: a service sends to and from a handful of
    addresses, and every conversion hashes the address (keccak)."""
    return str(to_checksum_address(address))
