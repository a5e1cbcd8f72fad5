"""The narrow interface between the chain-agnostic engine and a chain.

The engine owns every durable decision (which nonce, which signed bytes, when to
re-broadcast, when a step is final); an adapter only *talks to a chain*: it turns
a user's transaction description into plain data, signs, broadcasts, and reads
heads, blocks and receipts.  Keeping adapters stateless and small (like an httpx
transport) is what lets the same protocol serve EVM and Bitcoin, and lets tests
put a lying proxy between the two.

Everything crossing this boundary is plain data (ints, str, bytes, dicts of those)
so the engine can journal it with the payload codec.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigurationError


class BroadcastOutcome(enum.Enum):
    """How a node answered a raw transaction; the engine decides what each means."""

    ACCEPTED = "accepted"  # node took it (new to it)
    ALREADY_KNOWN = "already_known"  # node has these exact bytes already
    NONCE_TOO_LOW = "nonce_too_low"  # the nonce is spent (by us or by someone else)
    UNDERPRICED = "underpriced"  # replacement fee bump too small / fee below floor
    REJECTED = "rejected"  # permanently invalid (bad signature, insufficient funds...)
    UNKNOWN = "unknown"  # timeout / dropped answer: the node may or may not have it


class TxRejected(Exception):
    """An adapter's word that a transaction can never succeed as requested: it reverts
    at gas estimation, or the node refuses it permanently.  The engine turns it into
    ``TxRevertedError`` / ``SubmissionFailedError`` naming the step."""

    def __init__(self, reason: str, *, reverted: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reverted = reverted


class EndpointError(ConfigurationError):
    """The node's endpoint answered at the HTTP level with something retrying at a
    node-outage pace will not change: a redirect (never followed: it would re-send a
    signed transaction to another origin, or take a stranger's answer for the node's)
    or a 4xx other than 408/429 (wrong path, revoked API key).

    The engine gives it a few tries (``submission.ENDPOINT_ATTEMPTS``) rather than
    failing at once, since a proxy misrouting for a moment during a deploy looks the
    same, then fails the step with this message.  ``url`` is redacted by the adapter:
    no credentials, no API key in a path or query."""

    def __init__(self, url: str, status: int, method: str, reason: str = "") -> None:
        what = "redirect (not followed)" if 300 <= status < 400 else "refusal"
        super().__init__(f"{method}: the node at {url} answered HTTP {status}{' ' + reason if reason else ''} "
                         f"({what}): check the chain's RPC URL and credentials")
        self.url, self.status, self.method = url, status, method


@dataclass(frozen=True)
class BroadcastResult:
    outcome: BroadcastOutcome
    detail: str = ""


@dataclass(frozen=True)
class Header:
    """A block header as the tracker stores it."""

    number: int
    hash: str
    parent_hash: str
    timestamp: int


@dataclass(frozen=True)
class SignedTx:
    """Signed bytes plus what the engine must remember about them."""

    raw: bytes
    tx_hash: str
    fees: dict[str, int]  # e.g. {"max_fee_per_gas":…, "max_priority_fee_per_gas":…} or {"gas_price":…}


@dataclass(frozen=True)
class Receipt:
    """A typed receipt returned by ``ctx.submit`` once finality holds."""

    tx_hash: str
    block_number: int
    block_hash: str
    status: int  # 1 success, 0 reverted
    gas_used: int
    effective_fee: int  # wei (or satoshi) actually paid
    nonce: int
    logs: list[dict[str, Any]] = field(default_factory=list)  # decoded where an ABI is known
    revert_reason: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == 1


@runtime_checkable
class ChainAdapter(Protocol):
    """What the engine needs from one chain.

    ``name`` is the identifier users pass as ``ctx.submit(chain=...)``; it and the
    sender address key the nonce table, so it must be stable across deploys.
    """

    name: str

    def sender(self) -> str:
        """Address of the signer this adapter submits from."""

    def prepare(self, tx: Any) -> dict[str, Any]:
        """Turn a user's tx description (contract call, transfer, raw dict) into plain,
        journal-able data.  Called once, inside the step, before anything is recorded;
        raises ``ValueError`` naming the field at fault for bad input."""

    async def estimate(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` with its gas limit filled in (headroom included).  Runs before a
        nonce is allocated, so a call that reverts raises ``TxRejected`` without burning
        a nonce."""

    async def pending_nonce(self, sender: str) -> int:
        """The chain's pending transaction count; seeds the nonce table."""

    async def latest_nonce(self, sender: str) -> int:
        """Nonce count at the latest block: tells whether a nonce is spent."""

    async def sign(
        self, request: dict[str, Any], nonce: int, fees: dict[str, int] | None
    ) -> SignedTx:
        """Build and sign locally; ``fees`` None means price it from the fee market now."""

    def bump_fees(self, fees: dict[str, int], factor: float) -> dict[str, int]:
        """Fees for a same-nonce replacement, every field raised by at least ``factor``."""

    def gap_filler(self, sender: str) -> dict[str, Any]:
        """A request that burns a nonce harmlessly (a 0-value self-transfer)."""

    async def broadcast(self, raw: bytes) -> BroadcastResult:
        """Send raw bytes; never raises for node-side answers, only classifies them."""

    async def receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt if the tx is in a block the node considers canonical, else None."""

    async def in_mempool(self, tx_hash: str) -> bool:
        """Whether the node still holds the tx as pending."""

    async def head(self) -> Header:
        """The node's latest block header."""

    async def header_at(self, number: int) -> Header | None:
        """Canonical header at a height (None above the head)."""

    async def block_tx_hashes(self, block_hash: str) -> list[str]:
        """Transaction hashes of a block, for matching against pending attempts."""

    async def tagged_number(self, tag: str) -> int | None:
        """Block number of a finality tag ('finalized', 'safe'); None if unsupported."""

    async def aclose(self) -> None:
        """Release connections."""
