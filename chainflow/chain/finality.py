"""Finality policies: when a submission step may complete.

A policy is plain data (it is journaled with the intent), evaluated by the tracker
against its stored header window.  Bitcoin uses ``Confirmations``; EVM chains may also
use the chain's own ``finalized``/``safe`` tags.  Which of them a chain can satisfy its
adapter says (``ChainReader.finality_kinds``), and a new submission asking for another
is refused before anything is recorded (``require_supported``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError


@dataclass(frozen=True)
class Confirmations:
    n: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"Confirmations(n) needs an int >= 1, got {self.n!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "confirmations", "n": self.n}


@dataclass(frozen=True)
class Finalized:
    def to_dict(self) -> dict[str, Any]:
        return {"kind": "finalized"}


@dataclass(frozen=True)
class Safe:
    def to_dict(self) -> dict[str, Any]:
        return {"kind": "safe"}


# what ``ctx.submit(finality=...)`` takes: a count of confirmations or a finality tag
Finality = Confirmations | Finalized | Safe


def from_dict(data: dict[str, Any]) -> Finality:
    kind = data.get("kind")
    if kind == "confirmations":
        return Confirmations(int(data["n"]))
    if kind == "finalized":
        return Finalized()
    if kind == "safe":
        return Safe()
    raise ValueError(f"unknown finality policy {data!r}")


def policy_of(value: object, what: str) -> Finality:
    """The policy a ``submit`` asked for (None: one confirmation), refused when it is
    none of the three: it is journaled as JSON and evaluated by the tracker, so any
    other object would only fail later, inside the protocol's retries."""
    if value is None:
        return Confirmations(1)
    if not isinstance(value, (Confirmations, Finalized, Safe)):
        raise TypeError(f"finality of {what} must be cf.Confirmations(n), cf.Finalized() or cf.Safe(), "
                        f"got {value!r}")
    return value


def require_window(policy: Finality, window: int, what: str) -> None:
    """Refuse a confirmation count deeper than the tracker's header window.

    The tracker sees a reorg only down to the oldest header it keeps, ``window`` below
    the head (``TrackerConfig.window``), and that is also how long after a step
    completes it can still roll the step back.  ``Confirmations(n)`` with ``n`` above
    the window would complete on a block already at the window's edge, unwatched from
    the next head on, so a new submission asking for it is refused, naming both numbers.  ``Finalized``
    and ``Safe`` lag by as much as the chain decides, unknown here: for them (and for a
    submission journaled under a deeper window) the tracker keeps the header under every
    submission still waiting for its policy, however deep (``tracker.keep_from``).
    """
    if isinstance(policy, Confirmations) and policy.n > window:
        raise ConfigurationError(
            f"finality of {what} is Confirmations({policy.n}), deeper than the tracker's window of {window} "
            f"headers (TrackerConfig.window={window}); a reorg below the window is invisible to the tracker: "
            f"set TrackerConfig(window={policy.n}) or more, or ask for at most {window} confirmations")


def require_supported(policy: Finality, kinds: frozenset[str], chain: str, what: str) -> None:
    """Refuse a policy the chain cannot satisfy (``ChainReader.finality_kinds``): a
    payout asking Bitcoin for ``Finalized()`` would be signed, paid and mined, and its
    run would then wait for a tag the chain never reports."""
    kind = policy.to_dict()["kind"]
    if kind not in kinds:
        raise ConfigurationError(
            f"finality of {what} is {policy!r}, which chain {chain!r} cannot satisfy (it reports no {kind!r}; "
            f"it supports {', '.join(sorted(kinds)) or 'no policy'}): ask for cf.Confirmations(n) there")


def holds(policy: Finality, block_number: int, head: int, tags: dict[str, int | None]) -> bool:
    if isinstance(policy, Confirmations):
        return head - block_number + 1 >= policy.n
    tagged = tags.get("finalized" if isinstance(policy, Finalized) else "safe")
    return tagged is not None and tagged >= block_number
