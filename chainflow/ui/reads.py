"""What each page shows, read through the client API (``Chainflow``) and the stores'
read functions in one read-only transaction each (``Chainflow.read``): no SQL here.
Rows become small view records so the templates only format."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..chain import chainstore, coins, nonces
from ..chain.adapter import Header
from ..client.app import AttemptRecord, Chainflow, JournalEntry, ReorgEvent, RunStatus
from ..client.timeline import attach_attempts
from ..states import SubmissionState
from ..storage import limits, store
from .params import cursor_of

_REORG = re.compile(r"^reorg #(\d+) on ")


# --- runs -----------------------------------------------------------------------------


@dataclass
class RunsPage:
    runs: list[RunStatus]
    next_cursor: str | None  # the cursor of the page after this one (None: the last page)
    workflows: list[str]  # names to offer in the filter: registered here or served by a live worker


def runs_page(app: Chainflow, *, status: str | None, workflow: str | None, since: float | None,
              until: float | None, before: tuple[float, str] | None, limit: int) -> RunsPage:
    found = app.runs(status=status, workflow=workflow, since=since, until=until, before=before, limit=limit + 1)
    more = len(found) > limit
    found = found[:limit]
    last = found[-1] if more else None
    names = set(app.registry.names()) | app.read(store.served_workflows, time.time())
    return RunsPage(found, cursor_of(last.created_at, last.id) if last else None, sorted(names))


def find_run(app: Chainflow, text: str) -> str | None:
    """The run a search names: its id, or the idempotency key it was started with."""
    def read(conn: sa.Connection) -> str | None:
        row = store.get_run(conn, text) or store.run_by_key(conn, text)
        return None if row is None else str(row.id)

    return app.read(read)


# --- a run ----------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a run's timeline: a journal entry, or a failed attempt under it."""

    entry: JournalEntry | None
    attempt: AttemptRecord | None = None
    reorg: int | None = None  # the reorg event that invalidated the entry


@dataclass
class Confirmations:
    """How far a submission is towards its finality policy."""

    id: int
    state: str
    n: int  # confirmations so far (0 until included)
    required: int | None  # None: a tag policy (safe, finalized), not a count
    label: str

    @property
    def percent(self) -> int:
        if self.state == SubmissionState.FINAL:
            return 100
        if not self.required:
            return 50 if self.state == SubmissionState.INCLUDED else 0
        return min(100, self.n * 100 // self.required)

    @property
    def live(self) -> bool:
        return self.state not in (SubmissionState.FINAL, SubmissionState.FAILED)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "n": self.n, "required": self.required, "label": self.label,
                "percent": self.percent}


@dataclass
class Candidate:
    tx_hash: str
    fees: dict[str, Any]
    created_at: float


@dataclass
class Submission:
    id: int
    chain: str
    sender: str
    key: str
    run_id: str | None
    step: str | None
    state: str
    nonce: int | None
    tx_hash: str | None  # the candidate that was mined
    block_number: int | None
    error: str | None
    created_at: float
    updated_at: float
    batch_id: int | None
    stuck_since: float | None
    gap_fill: bool
    candidates: list[Candidate] = field(default_factory=list)
    coins: list[tuple[str, int, int | None]] = field(default_factory=list)  # outpoint, value, spent at block
    progress: Confirmations | None = None

    @property
    def bumps(self) -> int:
        return max(0, len(self.candidates) - 1)


@dataclass
class RunPage:
    status: RunStatus
    rows: list[Row]
    retrying: list[Row]  # failed attempts of steps still in backoff (no journal row yet)
    forks: list[RunStatus]
    submissions: list[Submission]


def run_page(app: Chainflow, run_id: str) -> RunPage:
    status = app.status(run_id)  # first: an unknown id raises RunNotFoundError here
    journal, attempts = app.journal(run_id), app.attempts(run_id)
    by_entry, unmatched = attach_attempts(journal, attempts)
    rows: list[Row] = []
    for i, e in enumerate(journal):
        found = _REORG.match(e.reason or "") if e.invalidated else None
        rows.append(Row(e, reorg=int(found.group(1)) if found else None))
        rows.extend(Row(e, a) for a in by_entry.get(i, []))
    retrying = [Row(None, a) for tries in unmatched.values() for a in tries]
    subs = app.read(lambda conn: _submissions(conn, chainstore.submissions_of(conn, [run_id], [])))
    return RunPage(status, rows, retrying, app.forks(run_id), subs)


# --- submissions ----------------------------------------------------------------------


def submissions_page(app: Chainflow, *, chain: str | None, state: str | None, before: int | None,
                     limit: int) -> tuple[list[Submission], int | None]:
    """A page of submissions, newest first, and the ``before`` of the next page."""
    def read(conn: sa.Connection) -> list[Submission]:
        return _submissions(conn, chainstore.submission_page(conn, chain, state, before, limit + 1))

    found = app.read(read)
    more = len(found) > limit
    return found[:limit], found[limit - 1].id if more else None


def _submissions(conn: sa.Connection, rows: list[sa.Row[Any]]) -> list[Submission]:
    ids = [int(r.id) for r in rows]
    tips = {chain: chainstore.header_tip(conn, chain) for chain in {r.chain for r in rows}}
    out: dict[int, Submission] = {}
    for r in rows:
        out[int(r.id)] = Submission(
            int(r.id), r.chain, r.sender, r.idempotency_key, r.run_id, limits.stored_step_label(r.step), r.state,
            None if r.nonce is None else int(r.nonce), r.tx_hash,
            None if r.block_number is None else int(r.block_number), r.error, r.created_at, r.updated_at,
            None if r.batch_id is None else int(r.batch_id), r.stuck_since, bool(r.gap_fill),
            progress=confirmations(r, tips[r.chain]))
    for c in chainstore.candidates_of(conn, ids):
        out[int(c.submission_id)].candidates.append(Candidate(c.tx_hash, json.loads(c.fees), c.created_at))
    for c in chainstore.reservations_of(conn, ids):
        out[int(c.submission_id)].coins.append((c.outpoint, int(c.value), c.spent_at_block))
    return list(out.values())


def confirmations(row: Any, tip: Header | None) -> Confirmations:
    """``row``: a submission's id, state, block_number and finality policy (JSON)."""
    policy = json.loads(row.finality)
    required = int(policy["n"]) if policy.get("kind") == "confirmations" else None
    state = str(row.state)
    if state == SubmissionState.FINAL:
        n = required or 0
    elif state == SubmissionState.INCLUDED and row.block_number is not None and tip is not None:
        n = max(0, tip.number - int(row.block_number) + 1)
    else:
        n = 0
    if required is not None:
        label = f"{min(n, required)}/{required} confirmations"
    else:
        label = f"waits for the {policy.get('kind')!r} tag"
    if state == SubmissionState.FINAL:
        label = f"final ({label})"
    elif state not in (SubmissionState.INCLUDED,):
        label = f"{state}, {label}"
    return Confirmations(int(row.id), state, n, required, label)


def progress(app: Chainflow, ids: list[int]) -> list[Confirmations]:
    """The live confirmations of these submissions, as the tracker last stored the head."""
    def read(conn: sa.Connection) -> list[Confirmations]:
        rows = chainstore.progress_of(conn, ids)
        tips = {chain: chainstore.header_tip(conn, chain) for chain in {r.chain for r in rows}}
        return [confirmations(r, tips[r.chain]) for r in sorted(rows, key=lambda r: r.id)]

    return app.read(read)


# --- chains ---------------------------------------------------------------------------


@dataclass
class Chain:
    name: str
    tip: Header | None  # the newest header the tracker stored
    leader: str | None
    leader_until: float | None
    node_head: int | None = None  # what the node reports now (an app's chain only)
    node_error: str | None = None

    @property
    def lag(self) -> int | None:
        if self.node_head is None or self.tip is None:
            return None
        return max(0, self.node_head - self.tip.number)


@dataclass
class Reorg:
    event: ReorgEvent
    runs: dict[str, str]  # affected tx hash -> its run


@dataclass
class ChainsPage:
    chains: list[Chain]
    reorgs: list[Reorg]
    nonces: list[nonces.SenderNonces]
    coins: list[coins.ChainCoins]
    health_error: str | None = None  # the nodes could not be asked: the database's view only


async def chains_page(app: Chainflow, *, reorg_limit: int = 50, timeout: float = 3.0) -> ChainsPage:
    def read(conn: sa.Connection) -> list[Chain]:
        names = sorted(set(chainstore.tracked_chains(conn)) | set(app.chains))
        out = []
        for name in names:
            lead = chainstore.leader(conn, f"tracker:{name}")
            out.append(Chain(name, chainstore.header_tip(conn, name), lead.owner if lead else None,
                             lead.expires if lead else None))
        return out

    chains = await app.aread(read)
    events = await asyncio.to_thread(app.reorgs, None, reorg_limit)
    reorgs = [Reorg(e, await app.aread(chainstore.runs_of_txs, e.chain, e.affected_txs)) for e in events]
    for chain in chains:
        adapter = app.chains.get(chain.name)
        if adapter is not None:
            try:
                chain.node_head = (await asyncio.wait_for(adapter.head(), timeout)).number
            except Exception as exc:  # noqa: BLE001 - a node down is what this page must show
                chain.node_error = f"{type(exc).__name__}: {exc}"
    page = ChainsPage(chains, reorgs, await app.aread(nonces.snapshot), await app.aread(coins.snapshot))
    if app.chains:
        try:
            page.nonces = await asyncio.wait_for(nonces.report(app.database, app.chains), timeout)
            page.coins = await asyncio.wait_for(coins.report(app.database, app.chains), timeout)
        except Exception as exc:  # noqa: BLE001 - keep the database's view, say why the node's is missing
            page.health_error = f"{type(exc).__name__}: {exc}"
    return page


# --- charts ---------------------------------------------------------------------------


@dataclass
class Latency:
    name: str
    count: int
    p50: float
    p90: float
    p99: float


@dataclass
class ChartsData:
    since: float
    width: float  # seconds per bucket of ``counts``
    counts: dict[int, dict[str, int]]  # bucket -> status -> runs created
    steps: list[Latency]
    confirmations: list[Latency]  # per chain: submitted -> final


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def latencies(groups: dict[str, list[float]]) -> list[Latency]:
    out = []
    for name, values in sorted(groups.items()):
        values.sort()
        out.append(Latency(name, len(values), percentile(values, 50), percentile(values, 90), percentile(values, 99)))
    return out


def charts(app: Chainflow, *, window: float, width: float, now: float, sample: int = 20_000) -> ChartsData:
    since = now - window

    def read(conn: sa.Connection) -> ChartsData:
        counts: dict[int, dict[str, int]] = {}
        for r in store.run_counts(conn, since, width):
            counts.setdefault(int(r.bucket), {})[str(r.status)] = int(r.n)
        steps: dict[str, list[float]] = {}
        for r in store.step_timings(conn, since, sample):
            steps.setdefault(r.key.partition("#")[0], []).append(r.finished_at - r.started_at)
        confirmed: dict[str, list[float]] = {}
        for chain in chainstore.tracked_chains(conn):
            times = [r.updated_at - r.created_at for r in chainstore.confirmation_times(conn, chain, since, sample)]
            if times:
                confirmed[chain] = times
        return ChartsData(since, width, counts, latencies(steps), latencies(confirmed))

    return app.read(read)

