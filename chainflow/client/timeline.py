"""What the command line (``chainflow show``) and the dashboard (``chainflow ui``) both
show of a run's records: failed attempts matched to the journal rows they led up to,
durations and UTC times.  Pure functions of the client API's records, so the two
presentations cannot drift apart."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from ..states import RunState
from .app import AttemptRecord, JournalEntry, RunStatus


def attach_attempts(
    journal: Sequence[JournalEntry], attempts: Sequence[AttemptRecord]
) -> tuple[dict[int, list[AttemptRecord]], dict[tuple[str, str], list[AttemptRecord]]]:
    """Which journal row each failed attempt led up to.

    AttemptRecord does not reference its journal row, and a reorg re-executes a step
    under the same (branch, key), so match by time: an attempt belongs to the first row
    of its step that finished at or after it started (the row records the final
    attempt; a submit's row starts when its intent was opened, before its failed
    attempts may have)."""
    rows: dict[tuple[str, str], list[int]] = {}
    for i, e in enumerate(journal):
        rows.setdefault((e.branch, e.key), []).append(i)
    by_entry: dict[int, list[AttemptRecord]] = {}
    unmatched: dict[tuple[str, str], list[AttemptRecord]] = {}
    for a in attempts:
        start = a.started_at if a.started_at is not None else float("-inf")
        owner = next((i for i in rows.get((a.branch, a.key), []) if _finished(journal[i]) >= start), None)
        if owner is None:
            unmatched.setdefault((a.branch, a.key), []).append(a)
        else:
            by_entry.setdefault(owner, []).append(a)
    return by_entry, unmatched


def _finished(e: JournalEntry) -> float:
    """A row without an end time is still open: every attempt so far precedes it."""
    return e.finished_at if e.finished_at is not None else float("inf")


@dataclass(frozen=True)
class Sleep:
    """How a ``ctx.sleep`` went.  Its journal row is written when the sleep starts
    (started = finished, output = the wake time) and never touched again, so how it
    ended is read from what came after it."""

    wake_at: float
    left_at: float | None  # when the run stopped sleeping; None while it still sleeps
    cut_short_by: str | None  # "cancel", or the run's end status, when it left before wake_at


def sleep_of(e: JournalEntry, journal: Sequence[JournalEntry], st: RunStatus) -> Sleep | None:
    """The sleep journaled by ``e``, a row of ``journal`` (None for other kinds).  The
    run left it at the first later row of its branch or compensation, or at the run's end: before the
    wake time only if something ended it (a cancel, a timeout).  Rows of other
    branches run meanwhile and say nothing about it."""
    if e.kind != "sleep" or not isinstance(e.output, (int, float)) or e.started_at is None:
        return None
    later = journal[next(i for i, x in enumerate(journal) if x is e) + 1:]  # journal order: a clock may stand still
    after = [x.started_at for x in later
             if x.started_at is not None and not x.invalidated and (x.branch == e.branch or x.kind == "compensation")]
    if st.done:
        after.append(st.updated_at)
    wake_at = float(e.output)
    left = min(after, default=None)
    if left is None or left >= wake_at:
        return Sleep(wake_at, None if left is None else wake_at, None)
    return Sleep(wake_at, left, "cancel" if st.status == RunState.CANCELLED or st.cancel_requested else st.status)


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(start: float | None, end: float | None) -> str:
    if start is None or end is None:
        return ""
    s = max(0.0, end - start)
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 60:
        return f"{s:.2f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"
