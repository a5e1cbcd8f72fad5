"""Tunables of the confirmation tracker (kept apart so the app can take them without
importing the tracker machinery)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..clock import to_seconds
from ..errors import ConfigurationError

#: The least ``bump_factor``: geth's pool (and anvil's, erigon's, reth's) refuses a
#: replacement that raises the fees by less than 10 %, so a smaller factor would spend
#: every bump on a refusal ("replacement transaction underpriced") while the payment waits.
MIN_BUMP_FACTOR = 1.1


@dataclass(frozen=True)
class Batching:
    """Payouts on a UTXO chain that share one transaction: each intent keeps its own
    idempotency key and receipt (its output), and a batch never changes once signed,
    so a fee bump can never drop an earlier payout.

    A batch is signed once its oldest intent has waited ``window`` seconds or
    ``max_size`` intents wait, whichever comes first."""

    window: float = 2.0
    max_size: int = 50

    def __post_init__(self) -> None:
        to_seconds(self.window, "Batching.window")
        if not isinstance(self.max_size, int) or isinstance(self.max_size, bool) or self.max_size < 1:
            raise ValueError(f"Batching.max_size must be an int >= 1, got {self.max_size!r}")


@dataclass
class TrackerConfig:
    poll_interval: float = 1.0
    # headers kept below the head: the deepest reorg the tracker sees, and the most
    # Confirmations(n) a new submission may ask for (finality.require_window)
    window: int = 128
    start_depth: int = 16  # how far back a fresh tracker starts
    # new blocks taken per iteration when the tracker is behind the node (after a
    # restart, an outage, a slow node): each batch commits on its own, so a failure
    # late in a long catch-up costs one batch, not the way back to where it started
    catch_up_blocks: int = 64
    rebroadcast_blocks: int = 3  # not seen for this many blocks: re-broadcast same bytes
    bump_blocks: int = 6  # still pending after this many blocks: same-nonce fee bump
    bump_factor: float = 1.125  # the common node replacement rule (12.5%); at least MIN_BUMP_FACTOR
    max_bumps: int = 5  # cap on replacements per submission
    stuck_batch: int = 32  # stuck submissions handled per head, bounding RPC
    # seconds without the node's head rising (or readable) before the ``chain_stalled``
    # alert; None: never.  Mind the chain: Bitcoin blocks can be an hour apart
    stall_after: float | None = 900.0
    # chain name -> how its payouts are batched; chains not named are not batched
    batching: dict[str, Batching] = field(default_factory=dict)
    # seconds a tracker's leadership of a chain lasts unrenewed: how long a killed
    # leader's chain goes unfollowed before another process takes over; None:
    # max(5 s, 10 poll intervals).  Shorter means more renewals on a quiet chain
    leader_lease: float | None = None

    def __post_init__(self) -> None:
        """Refuse what would spin (a zero or NaN poll interval) or never act (a negative
        count), naming the field: a config file's typo surfaces at startup."""
        to_seconds(self.poll_interval, "TrackerConfig.poll_interval", positive=True)
        if self.stall_after is not None:
            to_seconds(self.stall_after, "TrackerConfig.stall_after", positive=True)
        if self.leader_lease is not None:
            lease = to_seconds(self.leader_lease, "TrackerConfig.leader_lease", positive=True)
            if lease < 2 * self.poll_interval:  # a leader renews at most once a poll
                raise ValueError(f"TrackerConfig.leader_lease must be at least 2 poll intervals "
                                 f"({2 * self.poll_interval} s), got {self.leader_lease!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int":
                if not isinstance(value, int) or isinstance(value, bool):
                    raise TypeError(f"TrackerConfig.{f.name} must be an int, got {value!r}")
                # 0 bumps, depth 0: meaningful; a window or a batch of none is not
                least = 1 if f.name in ("window", "stuck_batch", "catch_up_blocks") else 0
                if value < least:
                    raise ValueError(f"TrackerConfig.{f.name} must be >= {least}, got {value!r}")
        factor = self.bump_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor):
            raise ValueError(f"TrackerConfig.bump_factor must be a finite number, got {factor!r}")
        if factor < MIN_BUMP_FACTOR:
            raise ConfigurationError(f"TrackerConfig.bump_factor must be at least {MIN_BUMP_FACTOR} (nodes refuse a "
                                     f"replacement raising the fees by less than 10 %), got {factor!r}")
        for chain, policy in self.batching.items():
            if not isinstance(policy, Batching):
                raise TypeError(f"TrackerConfig.batching[{chain!r}] must be a cf.Batching, got {policy!r}")

    @property
    def leadership_ttl(self) -> float:
        """Seconds a tracker's leadership lasts unrenewed (``leader_lease`` or its default)."""
        return max(5.0, self.poll_interval * 10) if self.leader_lease is None \
            else to_seconds(self.leader_lease, "TrackerConfig.leader_lease")
