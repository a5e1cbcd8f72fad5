"""What a node's answer to ``eth_sendRawTransaction`` means for the engine.

Nodes only agree on JSON-RPC error *codes* loosely (geth uses -32000 for everything,
anvil -32003, nethermind and besu their own), so the classification reads the message.
Texts are compared with case, spaces, underscores and punctuation removed, which lets one
needle match geth's "nonce too low", besu's "NONCE_TOO_LOW" and nethermind's
"NonceTooLow" alike.

The order matters: a node that already holds the exact bytes may also report the nonce
as used, and "already known" is the more precise answer.  Anything that says "try
later" (rate limits, a full pool, a nonce *above* the pool's window) is UNKNOWN rather
than REJECTED, because the engine treats a rejection as permanent and these are not.
A balance too low for the bytes' value plus gas at their fee cap is UNFUNDED: a cheaper
version of the same intent, or a top-up, may still be taken.
"""

from __future__ import annotations

import re

from chainflow.chain.adapter import BroadcastOutcome

_RULES: list[tuple[BroadcastOutcome, tuple[str, ...]]] = [
    (
        BroadcastOutcome.ALREADY_KNOWN,
        (
            "already known",  # geth, erigon, the in-process devnet
            "transaction already imported",  # anvil 1.x
            "already imported",
            "known transaction",  # older geth, besu
            "already in mempool",
            "already in pool",
            "tx already exists",
        ),
    ),
    (
        BroadcastOutcome.NONCE_TOO_LOW,
        (
            "nonce too low",  # geth, anvil, erigon; besu NONCE_TOO_LOW; nethermind NonceTooLow
            "nonce has already been used",  # infura / alchemy wording
            "old nonce",  # nethermind OldNonce
            "nonce is too low",
        ),
    ),
    (
        BroadcastOutcome.UNDERPRICED,
        (
            "underpriced",  # "replacement transaction underpriced", "transaction underpriced"
            "max fee per gas less than block base fee",  # geth, anvil
            "fee cap less than block base fee",  # erigon
            "fee too low",  # nethermind FeeTooLow, FeeTooLowToCompete
            "replacement fee too low",
            "gas price too low",  # besu GAS_PRICE_TOO_LOW
            "gas price below current base fee",  # besu
            "feecap too low",
            "max fee per gas too low",
        ),
    ),
    (
        BroadcastOutcome.UNFUNDED,
        (
            "insufficient funds",  # geth, anvil, erigon, reth: "... for gas * price + value"; nethermind
            "upfront cost exceeds balance",  # besu UPFRONT_COST_EXCEEDS_BALANCE
        ),
    ),
    (
        BroadcastOutcome.UNKNOWN,
        (
            "nonce too high",  # a gap below us: acceptable once the gap is filled
            "nonce too far",  # besu NONCE_TOO_FAR_IN_FUTURE_FOR_SENDER
            "txpool is full",
            "pool is full",
            "rate limit",
            "limit exceeded",
            "too many requests",
            "timeout",
            "timed out",
            "try again",
            "temporarily unavailable",
            "service unavailable",
            "capacity exceeded",
        ),
    ),
]


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


_SQUASHED: list[tuple[BroadcastOutcome, tuple[str, ...]]] = [
    (outcome, tuple(_squash(n) for n in needles)) for outcome, needles in _RULES
]


# py-evm / eth-tester: "Invalid transaction nonce: Expected 1, but got 0"
_EXPECTED_GOT = re.compile(r"nonce.*expected\D*(\d+).*got\D*(\d+)", re.IGNORECASE | re.DOTALL)


def classify(message: str) -> BroadcastOutcome:
    """Outcome for a node's error message; REJECTED when nothing more specific fits."""
    numbers = _EXPECTED_GOT.search(message)
    if numbers is not None:
        expected, got = int(numbers.group(1)), int(numbers.group(2))
        return BroadcastOutcome.NONCE_TOO_LOW if got < expected else BroadcastOutcome.UNKNOWN
    text = _squash(message)
    for outcome, needles in _SQUASHED:
        if any(needle in text for needle in needles):
            return outcome
    return BroadcastOutcome.REJECTED
