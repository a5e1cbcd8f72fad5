"""What a reorg breaks, and how a run is rolled back to the broken step.

The monitor (tracker) only *records*: orphaned headers, a reorg event, submissions
sent back to pending, and on each run whose submit step had completed on a finality
assumption that no longer holds, a ``rollback`` request naming that journal entry.

The rollback itself happens in the run's next execution, because only a replay of the
workflow code knows the compensation functions: the journal is replayed (nothing new
runs), compensations of every dependent step run newest first, each journaled once,
and then the invalidated entries are superseded (kept, marked, never deleted) so the
run resumes from the invalidated step with the same idempotency key — hence the same
nonce and signed bytes.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from .. import metrics
from ..states import EntryState, RunState, SubmissionState
from ..storage import codec, limits, store
from ..storage.schema import attempts, journal, reorgs, runs, submissions
from . import headers

SETTLED = (SubmissionState.INCLUDED, SubmissionState.FINAL)
REORG_SIGNAL = "chainflow.reorg"  # sent to every run whose transaction a reorg un-included


def record(conn: sa.Connection, chain: str, fork: int, new_hashes: list[str], now: float) -> int:
    """Orphan headers above ``fork``; un-include and flag what stood on them. Returns depth."""
    orphaned = headers.orphan_above(conn, chain, fork)
    if not orphaned:
        return 0
    old = [h.hash for h in orphaned]
    settled_there = sa.and_(submissions.c.chain == chain, submissions.c.block_hash.in_(old),
                            submissions.c.state.in_(SETTLED))
    # the lock order (store): their runs first, in id order, then the submissions
    store.lock_runs(conn, sorted(set(conn.execute(
        sa.select(submissions.c.run_id).where(settled_there, submissions.c.run_id.is_not(None))).scalars())))
    hit = list(conn.execute(sa.select(submissions).where(settled_there).order_by(submissions.c.id).with_for_update()))
    event_id = conn.execute(
        reorgs.insert().values(
            chain=chain, depth=len(orphaned), fork_number=fork, old_hashes=json.dumps(old),
            new_hashes=json.dumps(new_hashes), affected=json.dumps([s.tx_hash for s in hit]), detected_at=now,
        )
    ).inserted_primary_key[0]  # type: ignore[index]
    for sub in hit:
        conn.execute(
            submissions.update().where(submissions.c.id == sub.id).values(
                state=SubmissionState.BROADCAST, tx_hash=None, block_number=None, block_hash=None, receipt=None,
                last_broadcast_block=None, updated_at=now,
            )
        )
        if sub.run_id:
            # workflows observe reorgs with ctx.wait_for(REORG_SIGNAL)
            info = {"reorg": int(event_id), "chain": chain, "depth": len(orphaned), "fork_number": fork,
                    "tx_hash": sub.tx_hash, "finality_broken": sub.state == SubmissionState.FINAL}
            store.insert_signal(conn, sub.run_id, REORG_SIGNAL, codec.dumps(info), now)
        if sub.state == SubmissionState.FINAL and sub.run_id:
            reason = f"reorg #{event_id} on {chain}: block {sub.block_number} ({sub.block_hash}) orphaned"
            if request_rollback(conn, sub.run_id, sub.step, reason, now):
                metrics.inc("chainflow_rollbacks_total", chain=chain)
    metrics.inc("chainflow_reorgs_total", chain=chain)
    metrics.inc("chainflow_reorg_depth_blocks_total", len(orphaned), chain=chain)
    return len(orphaned)


def request_rollback(conn: sa.Connection, run_id: str, step: str, reason: str, now: float) -> bool:
    """Flag the run if the submit step journaled success on the now-broken assumption."""
    branch, _, key = step.partition("\x1f")
    entry = conn.execute(
        sa.select(journal.c.id).where(
            journal.c.run_id == run_id, journal.c.branch == branch, journal.c.key == key,
            journal.c.superseded == 0, journal.c.status == EntryState.OK,
        )
    ).first()
    if entry is None:
        return False  # not journaled yet: the step sees the submission pending and waits again
    if limits.in_compensation(branch):
        # an undo has no dependents to undo in turn: the submission is back to
        # broadcast, and the tracker re-broadcasts its signed bytes until it is final
        return False
    current = conn.execute(sa.select(runs.c.rollback).where(runs.c.id == run_id)).scalar()
    if current is not None and json.loads(current)["entry_id"] <= entry.id:
        return True  # an earlier entry is already being rolled back; it covers this one
    conn.execute(
        runs.update().where(runs.c.id == run_id).values(
            rollback=json.dumps({"entry_id": int(entry.id), "reason": reason}), updated_at=now,
        )
    )
    # a completed run is reopened; a failed or cancelled one already compensated everything
    conn.execute(
        runs.update()
        .where(runs.c.id == run_id, runs.c.status == RunState.COMPLETED)
        .values(status=RunState.PENDING, ready_at=now)
    )
    store.wake(conn, run_id, now)
    return True


def dependents(entries: list[store.Entry], target: store.Entry) -> list[store.Entry]:
    """The target, later entries of its branch and sub-branches, and entries of its
    ancestor branches recorded after it (i.e. after the branch joined them).  Sibling
    branches are independent and kept.  Entries in compensations' branches are never
    dependents of their own: they go with the entry they compensate (``supersede``)."""
    b = target.branch

    def depends(e: store.Entry) -> bool:
        if e.id < target.id or limits.in_compensation(e.branch):
            return False
        in_branch = not b or e.branch == b or e.branch.startswith(b + "/")
        ancestor = e.branch == "" or b.startswith(e.branch + "/")
        return in_branch or ancestor

    return [e for e in entries if depends(e)]


def supersede(conn: sa.Connection, run_id: str, doomed: list[store.Entry], reason: str, now: float) -> None:
    """Mark rolled-back entries (and their compensations, with everything a compensation
    journaled in its branch, and their attempts) invalidated and reopen the run at the
    invalidated step.  A compensation of an entry that runs again after the resume is
    then a new one, with fresh steps; its submissions' keys are derived from the same
    intent, so an undo already on the chain is found, not sent twice."""
    for e in doomed:
        keys = [e.key, f"{limits.COMPENSATION_PREFIX}{e.key}"]
        inside = limits.compensation_branch(e.branch, e.key)
        for table, values in ((journal, dict(superseded=journal.c.id, reason=reason)),
                              (attempts, dict(superseded=attempts.c.id))):
            conn.execute(
                table.update()
                .where(table.c.run_id == run_id, table.c.superseded == 0,
                       sa.or_(sa.and_(table.c.branch == e.branch, table.c.key.in_(keys)),
                              table.c.branch == inside,
                              table.c.branch.startswith(inside + limits.BRANCH_SEP, autoescape=True)))
                .values(**values)
            )
    conn.execute(
        runs.update().where(runs.c.id == run_id).values(
            rollback=None, status=RunState.PENDING, output=None, error=None, ready_at=now, updated_at=now,
            lease_owner=None, lease_expires=None,
        )
    )


def parse(text: str) -> dict[str, Any]:
    return json.loads(text)  # type: ignore[no-any-return]


def recorded(conn: sa.Connection, chain: str | None, limit: int) -> list[sa.Row[Any]]:
    """Reorg events as the trackers recorded them, newest first (``Chainflow.reorgs``)."""
    q = sa.select(reorgs).order_by(reorgs.c.id.desc()).limit(limit)
    if chain:
        q = q.where(reorgs.c.chain == chain)
    return list(conn.execute(q))
