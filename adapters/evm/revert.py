"""Readable revert reasons from whatever a node returns for a reverted call.

Nodes put the revert payload in ``error.data`` (geth, anvil: a 0x string; some
providers nest it as ``{"data": "0x..."}``) and often repeat the reason in the message
("execution reverted: only minter").  The payload is authoritative; the message is the
fallback for nodes that drop it.
"""

from __future__ import annotations

from typing import Any

from eth_abi import decode as abi_decode

from .abi import AbiRegistry

ERROR_SELECTOR = bytes.fromhex("08c379a0")  # Error(string)
PANIC_SELECTOR = bytes.fromhex("4e487b71")  # Panic(uint256)

# Solidity's panic codes (docs: "Panic via assert and similar errors")
PANIC_CODES = {
    0x00: "generic compiler panic",
    0x01: "assert failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division or modulo by zero",
    0x21: "invalid enum value",
    0x22: "corrupt storage byte array",
    0x31: "pop on empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to an uninitialised function pointer",
}

_PREFIXES = ("execution reverted: ", "execution reverted:", "vm execution error: ", "reverted: ")


def revert_data(error_data: Any) -> bytes | None:
    """The raw revert payload from a JSON-RPC ``error.data``, if there is one."""
    if isinstance(error_data, dict):
        error_data = error_data.get("data") or error_data.get("result")
    if isinstance(error_data, (bytes, bytearray)):
        return bytes(error_data)
    if isinstance(error_data, str) and error_data.startswith("0x"):
        try:
            return bytes.fromhex(error_data[2:])
        except ValueError:
            return None
    return None


def decode_revert(data: bytes | None, message: str = "", abis: AbiRegistry | None = None) -> str:
    """Error(string) text, "panic 0x11 (arithmetic overflow or underflow)", a known
    custom error as ``Name(args)``, or the raw selector and data."""
    if data:
        decoded = _standard(data)
        if decoded is None and abis is not None and len(data) >= 4:
            decoded = abis.custom_error(data)
        if decoded is None:
            return f"custom error 0x{data[:4].hex()} (data 0x{data.hex()})"
        return decoded or "reverted with an empty reason"
    for prefix in _PREFIXES:
        if message.lower().startswith(prefix):
            return message[len(prefix):].strip() or "reverted without a reason"
    if message.strip().lower() in ("execution reverted", "reverted", ""):
        return "reverted without a reason"
    return message


def _standard(data: bytes) -> str | None:
    """Error(string) / Panic(uint256), or None (also for a malformed payload)."""
    try:
        if data[:4] == ERROR_SELECTOR:
            return str(abi_decode(["string"], data[4:])[0])
        if data[:4] == PANIC_SELECTOR:
            code = int(abi_decode(["uint256"], data[4:])[0])
            return f"panic 0x{code:02x} ({PANIC_CODES.get(code, 'unknown panic code')})"
    except Exception:  # noqa: BLE001 - malformed payload: the caller shows it raw
        return None
    return None


def is_revert(code: int, message: str) -> bool:
    """Whether an error from eth_call / eth_estimateGas means "the call reverts".

    Code 3 is the standard "execution reverted with data"; geth reports reverts without
    data as -32000 "execution reverted", and an always-failing call as "gas required
    exceeds allowance" (out of gas at the block gas limit) - equally terminal.
    """
    text = message.lower()
    return (
        code == 3
        or "revert" in text
        or "gas required exceeds" in text
        or "out of gas" in text
        or "invalid opcode" in text
        or "stack underflow" in text
    )
