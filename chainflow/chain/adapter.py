"""The narrow interfaces between the chain-agnostic engine and a chain.

The engine owns every durable decision (which conflict domain an intent holds, which
signed bytes, when to re-broadcast, when a step is final); an adapter only *talks to
a chain*: it turns a user's transaction description into plain data, signs,
broadcasts, and reads heads, blocks and receipts.  Keeping adapters stateless and
small (like an httpx transport) is what lets the same protocol serve EVM and
Bitcoin, and lets tests put a lying proxy between the two.

The interface is cut into small protocols so an adapter implements only what its
chain family has: every adapter is a ``ChainReader``, a ``Broadcaster`` and a
``TxBuilder`` (together: ``ChainAdapter``); an account chain adds a ``NonceSource``,
a UTXO chain a ``CoinSource``, and which of the two it implements is how the engine
picks the intent's conflict domain (``chain.domain``).

Everything crossing this boundary is plain data (ints, str, bytes, dicts of those)
so the engine can journal it with the payload codec.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..errors import ConfigurationError


class BroadcastOutcome(enum.Enum):
    """How a node answered a raw transaction; the engine decides what each means."""

    ACCEPTED = "accepted"  # node took it (new to it)
    ALREADY_KNOWN = "already_known"  # node has these exact bytes already
    NONCE_TOO_LOW = "nonce_too_low"  # the nonce is spent (by us or by someone else)
    SPENT = "spent"  # an input is already spent in a block (by us or by someone else)
    UNDERPRICED = "underpriced"  # replacement fee bump too small / fee below floor
    # the sender's balance cannot pay what these bytes may cost (value + gas at their fee
    # cap): a top-up, or an earlier, cheaper version of the same intent, may still be taken
    UNFUNDED = "unfunded"
    REJECTED = "rejected"  # permanently invalid (bad signature, a gas limit above the block's...)
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
class Coin:
    """An unspent output a ``CoinSource`` can spend: ``outpoint`` is "txid:index"."""

    outpoint: str
    value: int  # in the chain's smallest unit (satoshi)


@dataclass(frozen=True)
class Receipt:
    """A typed receipt returned by ``ctx.submit`` once finality holds.

    The fields are what every chain family has; what only one family has lives in a
    subclass registered under a family name (``adapters.evm.EvmReceipt`` adds
    ``gas_used`` and ``nonce``) or, for an adapter without its own class, in ``extra``.
    The family name is journaled with the receipt so a replay rebuilds the same class.
    """

    tx_hash: str
    block_number: int
    block_hash: str
    status: int  # 1 success, 0 reverted
    effective_fee: int  # the fee actually paid, in the chain's smallest unit (wei, satoshi)
    position: int | None = None  # the transaction's index in its block
    logs: list[dict[str, Any]] = field(default_factory=list)  # decoded where an ABI is known
    revert_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # family-specific facts without a typed field

    family: ClassVar[str] = ""
    _families: ClassVar[dict[str, type[Receipt]]] = {}

    def __init_subclass__(cls, family: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if family:
            cls.family = family
            Receipt._families[family] = cls

    @property
    def succeeded(self) -> bool:
        return self.status == 1

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the journal and ``cf_submissions.receipt``."""
        return {"family": self.family, **dataclasses.asdict(self)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Receipt:
        """The receipt ``to_dict`` wrote, as its family's class when that is loaded.

        Journals written before receipts named their family hold the EVM fields
        (``gas_used``, ``nonce``) at the top level: they are EVM receipts.  A family
        whose class is not imported in this process comes back as a plain ``Receipt``
        with its own fields in ``extra``, so nothing journaled is lost."""
        data = dict(data)
        family = data.pop("family", None)
        if family is None:
            family = "evm" if "gas_used" in data else ""
        cls = Receipt._families.get(family, Receipt)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = {k: data.pop(k) for k in list(data) if k not in names}
        if unknown:
            data["extra"] = {**data.get("extra", {}), **unknown}
        return cls(**data)


@runtime_checkable
class ChainReader(Protocol):
    """Reading a chain: heads, blocks, receipts, the mempool.  What the tracker follows.

    ``name`` is the identifier users pass as ``ctx.submit(chain=...)``; with the
    sender it keys the submissions (and an account chain's nonce table), so it must
    be stable across deploys."""

    name: str

    @property
    def finality_kinds(self) -> frozenset[str]:
        """The finality policies the chain can ever satisfy, by kind (``"confirmations"``,
        ``"finalized"``, ``"safe"``: a policy's ``to_dict()["kind"]``); a tag only where
        ``tagged_number`` reports it.  The engine refuses a new submission asking for
        another kind before recording it: it would be paid, then never be final."""

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


@runtime_checkable
class Broadcaster(Protocol):
    async def broadcast(self, raw: bytes) -> BroadcastResult:
        """Send raw bytes; never raises for node-side answers, only classifies them.
        Bytes the node already has (in its mempool or in a block) are ``ALREADY_KNOWN``."""


@runtime_checkable
class TxBuilder(Protocol):
    """Turning a user's transaction into signed bytes."""

    def sender(self) -> str:
        """Address (or wallet identifier) this adapter submits from."""

    def prepare(self, tx: Any) -> dict[str, Any]:
        """Turn a user's tx description (contract call, transfer, payment) into plain,
        journal-able data.  Called once, inside the step, before anything is recorded;
        raises ``ValueError`` naming the field at fault for bad input."""

    async def estimate(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` with what signing needs filled in (an EVM gas limit with
        headroom).  Runs before a conflict domain is allocated, so a call that reverts
        raises ``TxRejected`` without burning a nonce or reserving a coin."""

    async def sign(self, request: dict[str, Any], domain: Any, fees: dict[str, int] | None) -> SignedTx:
        """Build and sign locally.  ``domain`` is the conflict domain the engine bound
        to the intent: the nonce (``NonceSource``) or the list of reserved outpoints
        (``CoinSource``), every one of which each version must spend.  ``fees`` None
        means price it from the fee market now."""

    def bump_fees(self, fees: dict[str, int], factor: float) -> dict[str, int]:
        """Fees for a replacement of the same intent, every field raised by at least
        ``factor``."""


@runtime_checkable
class NonceSource(Protocol):
    """An account chain's ordering: the conflict domain of an intent is
    ``(sender, nonce)``, and a nonce that is never mined blocks every later one."""

    async def pending_nonce(self, sender: str) -> int:
        """The chain's pending transaction count; seeds the nonce table."""

    async def latest_nonce(self, sender: str) -> int:
        """Nonce count at the latest block: tells whether a nonce is spent."""

    def gap_filler(self, sender: str) -> dict[str, Any]:
        """A request that burns a nonce harmlessly (a 0-value self-transfer)."""


@runtime_checkable
class CoinSource(Protocol):
    """A UTXO chain's coins: the conflict domain of an intent is the set of outpoints
    the engine reserved for it; every version spends all of them."""

    async def coins(self, owner: str) -> list[Coin]:
        """The owner's spendable outputs in the canonical chain."""

    def select(self, request: dict[str, Any], available: list[Coin]) -> list[Coin]:
        """Which of ``available`` (unreserved) coins fund ``request``, its fee and the
        fee bumps it may need; deterministic given the coins.  Raises ``TxRejected``
        when they cannot (insufficient funds)."""

    async def spender(self, outpoint: str) -> str | None:
        """The tx hash spending ``outpoint`` in the canonical chain, None if unspent there."""

    async def conflicting(self, outpoint: str) -> str | None:
        """The tx hash in the canonical chain that keeps ``outpoint`` from ever existing
        there: it spends an input of the transaction that would create ``outpoint``,
        which is not in that chain (another version of a payout was mined instead of
        the one whose change ``outpoint`` is).  None while ``outpoint`` exists or may
        still come to (its transaction in a mempool, or nothing conflicting with it)."""


@runtime_checkable
class BatchBuilder(Protocol):
    """A UTXO chain's batching: many payout intents paid by one transaction.

    The engine decides which intents share a batch and when (``TrackerConfig.batching``);
    the adapter only knows how requests combine and how a batch's receipt reads for
    one of its members."""

    def merge(self, requests: list[dict[str, Any]]) -> dict[str, Any]:
        """One request paying every request's outputs, in the order given (change last)."""

    def member_receipt(self, receipt: Receipt, index: int) -> Receipt:
        """The receipt of the ``index``-th merged request: the same transaction, its output."""


@runtime_checkable
class ChainAdapter(ChainReader, Broadcaster, TxBuilder, Protocol):
    """What every adapter implements; add ``NonceSource`` or ``CoinSource``."""


@dataclass(frozen=True)
class Simulation:
    """What a node said a transaction would do at a past block, without it being sent."""

    block_number: int
    succeeded: bool
    detail: str  # the call's return data (hex), or the decoded revert reason


@runtime_checkable
class Simulator(Protocol):
    """Optional: what replay asks of a chain when new code builds another transaction
    than history holds.  Neither method signs or sends anything."""

    def describe(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` (from ``prepare``) for a reader: the function called and its
        arguments where an ABI is known, else the plain fields.  Pure."""

    async def simulate(self, request: dict[str, Any], block_number: int) -> Simulation:
        """Execute ``request`` as a call against the state at ``block_number`` (an
        archive node or a devnet keeps it).  Raises when the node cannot answer for
        that block (pruned state): the caller then reports it as not simulated."""
