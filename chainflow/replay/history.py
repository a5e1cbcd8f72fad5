"""A run's history, as replay and export need it: everything the run observed, in
memory, detached from the database it was read from.

Replay never reads the live tables while it executes: the history is loaded first (one
read-only transaction for any number of runs) and the workflow code runs against this
copy, so nothing it does can reach the live run.  The same object is what ``chainflow
export`` writes, as versioned JSON in which every payload stays the codec text the
journal holds, so big ints, Decimals and bytes come back exactly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from ..chain import chainstore
from ..chain.adapter import Receipt
from ..errors import ChainflowError
from ..states import EntryState
from ..storage import codec, limits, store

FORMAT = "chainflow-history"
VERSION = 1


class HistoryFormatError(ChainflowError):
    """A history file that is not one ``chainflow export`` wrote (or a newer version)."""


@dataclass(frozen=True)
class RecordedRun:
    id: str
    workflow: str
    status: str
    input: str  # codec text
    output: str | None
    error: str | None
    created_at: float
    parent_id: str | None


@dataclass(frozen=True)
class RecordedEntry:
    """One journal row, a superseded one (a reorg invalidated it) included."""

    id: int
    branch: str
    position: int
    key: str
    kind: str
    status: str
    output: str | None  # codec text
    error: str | None  # describe_error JSON
    attempts: int
    started_at: float | None
    finished_at: float | None
    superseded: bool
    reason: str | None

    @property
    def label(self) -> str:
        return f"{self.branch}{limits.BRANCH_SEP}{self.key}" if self.branch else self.key

    @property
    def ok(self) -> bool:
        return self.status == EntryState.OK


@dataclass(frozen=True)
class RecordedAttempt:
    branch: str
    key: str
    attempt: int
    error: str | None
    started_at: float | None
    finished_at: float | None
    next_at: float | None
    superseded: bool


@dataclass(frozen=True)
class RecordedSubmission:
    """What was asked of the chain for a submit step: the prepared request and the key."""

    chain: str
    sender: str
    idempotency_key: str
    run_id: str | None
    step: str | None  # "branch\\x1fkey" of the submitting run
    request: str  # codec text of the adapter's prepared (and estimated) request
    state: str
    tx_hash: str | None
    block_number: int | None
    receipt: str | None


@dataclass(frozen=True)
class RecordedSignal:
    name: str
    payload: str | None
    created_at: float
    consumed: bool


@dataclass(frozen=True)
class History:
    run: RecordedRun
    entries: list[RecordedEntry]
    attempts: list[RecordedAttempt]
    submissions: list[RecordedSubmission]
    signals: list[RecordedSignal]

    def live(self) -> list[RecordedEntry]:
        """The entries a re-execution replays: every one no reorg invalidated."""
        return [e for e in self.entries if not e.superseded]

    def submission_for(self, entry: RecordedEntry) -> RecordedSubmission | None:
        """The submission behind a journaled submit: the one whose receipt it holds,
        else the one the run opened at that step (a submit that failed)."""
        if entry.ok and entry.output is not None:
            tx_hash = Receipt.from_dict(codec.loads(entry.output)).tx_hash
            found = next((s for s in self.submissions if s.tx_hash == tx_hash), None)
            if found is not None:
                return found
        step = f"{entry.branch}\x1f{entry.key}"
        return next((s for s in self.submissions if s.run_id == self.run.id and s.step == step), None)

    # --- export ----------------------------------------------------------------

    def to_json(self) -> str:
        def rows(items: list[Any]) -> list[dict[str, Any]]:
            return [dataclasses.asdict(i) for i in items]

        return json.dumps({
            "format": FORMAT, "version": VERSION, "run": dataclasses.asdict(self.run),
            "entries": rows(self.entries), "attempts": rows(self.attempts),
            "submissions": rows(self.submissions), "signals": rows(self.signals),
        }, indent=1)

    @staticmethod
    def from_json(text: str, source: str = "history") -> History:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HistoryFormatError(f"{source} is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise HistoryFormatError(f"{source} is not a chainflow history (no \"format\": {FORMAT!r})")
        if data.get("version") != VERSION:
            raise HistoryFormatError(f"{source} is history format version {data.get('version')!r}; "
                                     f"this chainflow reads version {VERSION}")
        try:
            return History(
                RecordedRun(**data["run"]),
                [RecordedEntry(**e) for e in data["entries"]],
                [RecordedAttempt(**a) for a in data["attempts"]],
                [RecordedSubmission(**s) for s in data["submissions"]],
                [RecordedSignal(**s) for s in data["signals"]],
            )
        except (KeyError, TypeError) as exc:
            raise HistoryFormatError(f"{source} is a damaged chainflow history: {exc}") from None


def load(conn: sa.Connection, run_ids: list[str]) -> dict[str, History]:
    """The histories of ``run_ids`` that exist (read in one transaction: ``conn``'s)."""
    rows = store.recorded_rows(conn, run_ids)
    entries: dict[str, list[RecordedEntry]] = {}
    hashes: list[str] = []
    for r in rows.journal:
        entries.setdefault(r.run_id, []).append(RecordedEntry(
            r.id, r.branch, r.position, r.key, r.kind, r.status, r.output, r.error, r.attempts, r.started_at,
            r.finished_at, bool(r.superseded), r.reason))
        if r.kind == "submit" and r.status == EntryState.OK and r.output is not None:
            hashes.append(codec.loads(r.output)["tx_hash"])
    tries: dict[str, list[RecordedAttempt]] = {}
    for a in rows.attempts:
        tries.setdefault(a.run_id, []).append(RecordedAttempt(
            a.branch, a.key, a.attempt, a.error, a.started_at, a.finished_at, a.next_at, bool(a.superseded)))
    sent: dict[str, list[RecordedSignal]] = {}
    for s in rows.signals:
        sent.setdefault(s.run_id, []).append(RecordedSignal(s.name, s.payload, s.created_at, bool(s.consumed)))
    subs = [RecordedSubmission(s.chain, s.sender, s.idempotency_key, s.run_id, s.step, s.request, s.state,
                               s.tx_hash, s.block_number, s.receipt)
            for s in (chainstore.submissions_of(conn, run_ids, hashes) if entries else [])]
    out: dict[str, History] = {}
    for r in rows.runs:
        own = entries.get(r.id, [])
        mine = {codec.loads(e.output)["tx_hash"] for e in own if e.kind == "submit" and e.ok and e.output}
        out[r.id] = History(
            RecordedRun(r.id, r.workflow, r.status, r.input, r.output, r.error, r.created_at, r.parent_id),
            own, tries.get(r.id, []), [s for s in subs if s.run_id == r.id or s.tx_hash in mine],
            sent.get(r.id, []))
    return out
