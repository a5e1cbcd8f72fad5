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
from typing import Any

from ..states import SubmissionState
from ..storage import limits, store

SETTLED = (SubmissionState.INCLUDED, SubmissionState.FINAL)
REORG_SIGNAL = "chainflow.reorg"  # sent to every run whose transaction a reorg un-included


def dependents(entries: list[store.Entry], targets: list[store.Entry]) -> list[store.Entry]:
    """Each target, later entries of its branch and sub-branches, and entries of its
    ancestor branches recorded after it (i.e. after the branch joined them); with several
    targets (one reorg orphaned submissions of sibling branches), what depends on any.
    Sibling branches are independent and kept.  Compensations, and entries in their
    branches, are never dependents of their own: they go with the entry they compensate
    (``supersede``); the undo of a step before the target stays done."""

    def depends(e: store.Entry, target: store.Entry) -> bool:
        b = target.branch
        if e.id < target.id or e.kind == "compensation" or limits.in_compensation(e.branch):
            return False
        in_branch = not b or e.branch == b or e.branch.startswith(b + "/")
        ancestor = e.branch == "" or b.startswith(e.branch + "/")
        return in_branch or ancestor

    return [e for e in entries if any(depends(e, t) for t in targets)]


def parse(text: str) -> dict[str, Any]:
    return json.loads(text)  # type: ignore[no-any-return]
