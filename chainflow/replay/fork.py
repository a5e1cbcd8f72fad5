"""Where a fork starts, and what it starts from.

A fork is a new run (its own id, ``parent_id`` naming the source) whose journal is a
copy of the source's entries recorded before the fork point; workers then execute it
like any run, so those steps replay from the copy and everything from the fork point
on runs live, with the current code or the fork's overrides.  The point is chosen by
meaning, never by an internal entry id: a step's label (``name``, ``name#2`` for its
third occurrence, ``branch/name`` inside a branch), the first failed step, or the first
step that started at or after a time.

Nothing the source ran before the point runs again: its submissions' receipts are in
the copied entries.  A submission from the point on that uses a key the source already
used resolves to the source's submission (submissions are keyed by chain, sender and
key, not by run), so exactly-once holds across forks; paying again takes a new key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ChainflowError
from ..states import TERMINAL, EntryState
from ..storage import limits
from .history import History, RecordedEntry


class ForkError(ChainflowError):
    """A fork that cannot be made: the source is still unfinished (it and its fork would
    both execute the steps after the point), or the point is not in its history."""


@dataclass(frozen=True)
class ForkPoint:
    """Exactly one of: ``step`` (a label), ``failed`` (the first failed step), ``after``
    (epoch seconds: the first step that started then or later)."""

    step: str | None = None
    failed: bool = False
    after: float | None = None

    def __post_init__(self) -> None:
        if sum((self.step is not None, self.failed, self.after is not None)) != 1:
            raise ValueError("a fork point is exactly one of: a step name, the first failed step, a time")

    def describe(self) -> str:
        if self.step is not None:
            return f"step {self.step!r}"
        return "the first failed step" if self.failed else f"the first step started at or after {self.after}"


def _forkable(e: RecordedEntry) -> bool:
    """An operation of the workflow itself: compensations ran because the source ended,
    which the fork has yet to decide for itself."""
    return e.kind != "compensation" and not limits.in_compensation(e.branch)


def fork_entry(history: History, point: ForkPoint) -> RecordedEntry:
    """The live entry the fork re-executes from (it and everything after run anew)."""
    if history.run.status not in TERMINAL:
        raise ForkError(f"run {history.run.id} is {history.run.status}: fork a finished run (cancel this one "
                        "first), or it and its fork would both execute the steps after the fork point")
    candidates = [e for e in history.live() if _forkable(e)]
    if point.step is not None:
        found = next((e for e in candidates if e.label == point.step), None)
    elif point.failed:
        found = next((e for e in candidates if e.status == EntryState.ERROR), None)
    else:
        assert point.after is not None
        found = next((e for e in candidates if e.started_at is not None and e.started_at >= point.after), None)
    if found is None:
        shown = ", ".join(dict.fromkeys(e.label for e in candidates)) or "none"
        raise ForkError(f"run {history.run.id} has no {point.describe()} in its journal (its steps: {shown})")
    return found


def copied(history: History, point: RecordedEntry) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The journal rows and failed attempts a fork from ``point`` starts with: every
    settled operation recorded before it (a wait still pending is waited for anew)."""
    entries = [e for e in history.live()
               if e.id < point.id and _forkable(e) and e.status != EntryState.PENDING]
    slots = {(e.branch, e.key) for e in entries}
    rows = [dict(branch=e.branch, position=e.position, key=e.key, kind=e.kind, status=e.status, output=e.output,
                 error=e.error, attempts=e.attempts, started_at=e.started_at, finished_at=e.finished_at)
            for e in entries]
    tries = [dict(branch=a.branch, key=a.key, attempt=a.attempt, error=a.error, started_at=a.started_at,
                  finished_at=a.finished_at, next_at=a.next_at)
             for a in history.attempts if not a.superseded and (a.branch, a.key) in slots]
    return rows, tries
