"""Reading what a node says: revert reasons and broadcast answers."""

from __future__ import annotations

from typing import Any

from eth_abi import decode

from chainflow.adapter import BroadcastOutcome

_ERROR_SELECTOR = "08c379a0"  # Error(string)
_PANIC_SELECTOR = "4e487b71"  # Panic(uint256)

# node error text (geth, anvil/reth, nethermind, erigon) -> what it means for us
_PATTERNS: list[tuple[tuple[str, ...], BroadcastOutcome]] = [
    (("already known", "known transaction", "already imported", "alreadyknown", "already exists"),
     BroadcastOutcome.ALREADY_KNOWN),
    (("nonce too low", "noncetoolow", "nonce has already been used", "old nonce", "invalid nonce"),
     BroadcastOutcome.NONCE_TOO_LOW),
    (("underpriced", "fee too low", "max fee per gas less than block base fee", "feecap too low",
      "fee cap less than block base fee", "replacement fee too low"),
     BroadcastOutcome.UNDERPRICED),
]


def classify(message: str) -> BroadcastOutcome:
    text = message.lower()
    for needles, outcome in _PATTERNS:
        if any(n in text for n in needles):
            return outcome
    return BroadcastOutcome.REJECTED


def revert_reason(data: Any, message: str = "") -> str:
    """A readable reason from revert data (Error(string), Panic(uint256)) or the message."""
    hexdata = data.get("data") if isinstance(data, dict) else data
    if isinstance(hexdata, str) and hexdata.startswith("0x") and len(hexdata) >= 10:
        selector, body = hexdata[2:10], bytes.fromhex(hexdata[10:])
        try:
            if selector == _ERROR_SELECTOR:
                return str(decode(["string"], body)[0])
            if selector == _PANIC_SELECTOR:
                return f"panic 0x{decode(['uint256'], body)[0]:02x}"
        except Exception:  # undecodable payload: fall through to the raw data
            pass
        return f"custom error 0x{selector} ({hexdata})"
    prefix = "execution reverted: "
    return message[len(prefix):] if message.startswith(prefix) else (message or "reverted without a reason")
