"""Finality policies: when a submission step may complete.

A policy is plain data (it is journaled with the intent), evaluated by the tracker
against its stored header window.  Bitcoin uses ``Confirmations``; EVM chains may also
use the chain's own ``finalized``/``safe`` tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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


Policy = Confirmations | Finalized | Safe


def from_dict(data: dict[str, Any]) -> Policy:
    kind = data.get("kind")
    if kind == "confirmations":
        return Confirmations(int(data["n"]))
    if kind == "finalized":
        return Finalized()
    if kind == "safe":
        return Safe()
    raise ValueError(f"unknown finality policy {data!r}")


def depth(policy: Policy) -> int:
    """How many headers back the tracker must keep for this policy to be checkable."""
    return policy.n if isinstance(policy, Confirmations) else 64


def holds(policy: Policy, block_number: int, head: int, tags: dict[str, int | None]) -> bool:
    if isinstance(policy, Confirmations):
        return head - block_number + 1 >= policy.n
    tagged = tags.get("finalized" if isinstance(policy, Finalized) else "safe")
    return tagged is not None and tagged >= block_number
