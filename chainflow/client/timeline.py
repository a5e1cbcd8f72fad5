"""What the command line (``chainflow show``) and the dashboard (``chainflow ui``) both
show of a run's records: failed attempts matched to the journal rows they led up to,
durations and UTC times.  Pure functions of the client API's records, so the two
presentations cannot drift apart."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from .app import AttemptRecord, JournalEntry


def attach_attempts(
    journal: Sequence[JournalEntry], attempts: Sequence[AttemptRecord]
) -> tuple[dict[int, list[AttemptRecord]], dict[tuple[str, str], list[AttemptRecord]]]:
    """Which journal row each failed attempt led up to.

    AttemptRecord does not reference its journal row, and a reorg re-executes a step
    under the same (branch, key), so match by time: an attempt belongs to the first row
    of its step that started at or after it (the row records the final attempt)."""
    rows: dict[tuple[str, str], list[int]] = {}
    for i, e in enumerate(journal):
        rows.setdefault((e.branch, e.key), []).append(i)
    by_entry: dict[int, list[AttemptRecord]] = {}
    unmatched: dict[tuple[str, str], list[AttemptRecord]] = {}
    for a in attempts:
        start = a.started_at if a.started_at is not None else float("-inf")
        owner = next((i for i in rows.get((a.branch, a.key), []) if _started(journal[i]) >= start), None)
        if owner is None:
            unmatched.setdefault((a.branch, a.key), []).append(a)
        else:
            by_entry.setdefault(owner, []).append(a)
    return by_entry, unmatched


def _started(e: JournalEntry) -> float:
    """A row without a start time is still open: every attempt so far precedes it."""
    return e.started_at if e.started_at is not None else float("inf")


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
