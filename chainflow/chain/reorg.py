"""What a reorg breaks, and how a run is rolled back to the broken step.

The monitor (tracker) only *records* (``chainstore.record_reorg``): orphaned headers, a reorg event, submissions
sent back to pending, and on each run whose submit step had completed on a finality
assumption that no longer holds, a ``rollback`` request naming that journal entry.

The rollback itself happens in the run's next execution, because only a replay of the
workflow code knows the compensation functions: the journal is replayed (nothing new
runs), compensations of every dependent step run newest first, each journaled once,
and then the invalidated entries are superseded (``store.supersede``) (kept, marked, never deleted) so the
run resumes from the invalidated step with the same idempotency key — hence the same
nonce and signed bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from ..states import SubmissionState
from ..storage import limits, store

SETTLED = (SubmissionState.INCLUDED, SubmissionState.FINAL)
REORG_SIGNAL = "chainflow.reorg"  # sent to every run whose transaction a reorg un-included


class BranchHistory(Protocol):
    """What a run's execution observed of its branches (``runtime.branchorder``)."""

    def ended_before(self, ended: str, opened: str) -> bool:
        """Whether sibling branch ``ended`` had ended when ``opened`` was opened."""

    def fed(self, branch: str, position: int, target: str) -> bool:
        """Whether the operation at ``position`` of ``branch`` came after the branch had
        awaited a branch whose result may rest on branch ``target``."""


def dependents(entries: list[store.Entry], targets: list[store.Entry],
               history: BranchHistory | None = None) -> list[store.Entry]:
    """Each target, later entries of its branch and sub-branches, entries of its
    ancestor branches recorded after it (i.e. after the branch joined them), entries of
    a branch opened after the target's side of it had ended (the second round of two
    consecutive gathers), and entries of a branch made after it awaited the target's
    branch task (``history``); with several targets (one reorg orphaned submissions of
    sibling branches), what depends on any.  Sibling branches that ran beside it are
    independent and kept.  Compensations, and entries in their branches, are never
    dependents of their own: they go with the entry they compensate (``supersede``);
    the undo of a step before the target stays done."""

    def depends(e: store.Entry, target: store.Entry) -> bool:
        b = target.branch
        if e.id < target.id or e.kind == "compensation" or limits.in_compensation(e.branch):
            return False
        in_branch = not b or e.branch == b or e.branch.startswith(b + limits.BRANCH_SEP)
        ancestor = e.branch == "" or b.startswith(e.branch + limits.BRANCH_SEP)
        return in_branch or ancestor or (history is not None and (
            opened_after(e.branch, b, history.ended_before) or history.fed(e.branch, e.position, b)))

    return [e for e in entries if any(depends(e, t) for t in targets)]


def opened_after(branch: str, target: str, ended_before: Callable[[str, str], bool]) -> bool:
    """Whether ``branch`` lies in a branch opened after the sibling holding ``target``
    had ended: where the two paths part, the target's side ended first."""
    ours, theirs = branch.split(limits.BRANCH_SEP), target.split(limits.BRANCH_SEP)
    depth = 0
    while ours[depth] == theirs[depth]:  # neither is an ancestor of the other (the caller's cases)
        depth += 1
    parent = ours[:depth]
    return ended_before(limits.BRANCH_SEP.join(parent + [theirs[depth]]),
                        limits.BRANCH_SEP.join(parent + [ours[depth]]))


def parse(text: str) -> dict[str, Any]:
    return json.loads(text)  # type: ignore[no-any-return]
