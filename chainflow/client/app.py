"""``Chainflow``: the registry of workflows plus the client half of the engine.

The client methods (start, signal, cancel, status, journal) are plain synchronous
calls so a Django/Flask view can use them without an event loop; each has an ``a``-
prefixed coroutine twin for async code.  None of them needs a running worker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import signal as _signal
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from ..chain import chainstore
from ..chain.adapter import ChainAdapter
from ..chain.tracker_config import TrackerConfig
from ..clock import Clock, SystemClock, seconds, to_epoch, to_seconds
from ..errors import (
    ConfigurationError,
    IdempotencyConflictError,
    RunFinishedError,
    RunForkedError,
    RunNotDeadLetteredError,
    RunNotFoundError,
    ScheduleNotFoundError,
)
from ..events import Events, Hook
from ..retry import DEFAULT_RETRY, Retry
from ..runtime import schedules as scheduling
from ..runtime.registry import Registry, WorkflowDef, WorkflowFn, infer_input_type, same_input
from ..runtime.worker import call_on
from ..states import TERMINAL, EntryState, RunState, run_state
from ..storage import codec, limits, schedulestore, store
from ..storage.connector import resolve_url
from ..storage.database import Database
from ..threads import offload

if TYPE_CHECKING:
    from ..chain.submission import Submitter
    from ..replay.history import History
    from ..replay.report import RunReport, SweepReport
    from ..runtime.worker import Worker
    from .timetravel import ForkSummary, Progress, StepCode, WorkflowCode

T = TypeVar("T")
F = TypeVar("F", bound=WorkflowFn)


@dataclass(frozen=True)
class RunHandle:
    id: str
    workflow: str
    created: bool  # False when an idempotent start returned an existing run


@dataclass(frozen=True)
class JournalEntry:
    branch: str
    position: int
    key: str
    kind: str
    status: EntryState
    output: Any
    error: dict[str, Any] | None
    attempts: int
    started_at: float | None
    finished_at: float | None
    invalidated: bool
    reason: str | None


@dataclass(frozen=True)
class AttemptRecord:
    branch: str
    key: str
    attempt: int
    error: dict[str, Any] | None
    started_at: float | None
    finished_at: float | None
    next_at: float | None


@dataclass(frozen=True)
class ReorgEvent:
    id: int
    chain: str
    depth: int
    fork_number: int
    old_hashes: list[str]
    new_hashes: list[str]
    affected_txs: list[str]
    detected_at: float


@dataclass(frozen=True)
class ScheduleStatus:
    """A schedule as ``cf_schedules`` holds it (``chainflow schedules``)."""

    name: str
    workflow: str
    spec: dict[str, Any]  # cron or every, time zone, missed-fire policy
    paused: bool
    next_fire: float | None  # None: timed afresh by the next worker to look (new or resumed)
    last_fire: float | None
    last_run_id: str | None


@dataclass(frozen=True)
class RunStatus:
    id: str
    workflow: str
    status: RunState
    input: Any
    output: Any
    error: dict[str, Any] | None
    created_at: float
    updated_at: float
    wake_at: float | None
    waiting_on: list[str]
    cancel_requested: bool
    compensations: dict[str, EntryState] = field(default_factory=dict)  # "branch/step" -> ok | error
    # a reorg's request to roll back to journal entries: {"entry_id": the earliest,
    # "entry_ids": all of them, "reason": …}; on a failed or cancelled run it stays
    # unapplied (its compensations had already run)
    rollback: dict[str, Any] | None = None
    # unfinished, and no live worker announces its workflow: it stays where it is until
    # a worker that registers the workflow starts (a deploy is missing, not slow)
    unserved: bool = False
    # a child run's parent (``ctx.child``) and its slot there ("branch/name"); None for
    # other runs (a fork's source is not its parent: ``forked_from``)
    parent: str | None = None
    parent_step: str | None = None
    forked_from: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


class Chainflow:
    def __init__(
        self,
        database_url: str | None = None,
        *,
        chains: Sequence[ChainAdapter] = (),
        clock: Clock | None = None,
        default_retry: Retry = DEFAULT_RETRY,
        lease_seconds: float = 30.0,
        tracker: TrackerConfig | None = None,
        max_recoveries: int = 10,
        busy_timeout: float = 30.0,
    ) -> None:
        """``max_recoveries``: how many times a run may be taken over after its worker
        died or lost its lease while running it (or its executor crashed) before it is
        dead-lettered instead of executed again.  ``busy_timeout``: seconds a SQLite
        client call waits for a lock another process holds before raising
        ``DatabaseLockedError`` (ignored on Postgres)."""
        if isinstance(max_recoveries, bool) or not isinstance(max_recoveries, int):
            raise TypeError(f"max_recoveries must be an int, got {max_recoveries!r}")
        if max_recoveries < 0:
            raise ValueError(f"max_recoveries must be >= 0, got {max_recoveries!r}")
        if not isinstance(default_retry, Retry):
            raise TypeError(f"default_retry must be a chainflow.Retry, got {default_retry!r}")
        if tracker is not None and not isinstance(tracker, TrackerConfig):
            raise TypeError(f"tracker must be a chainflow.TrackerConfig, got {type(tracker).__name__}")
        self.database_url = resolve_url(database_url)
        self.database = Database(self.database_url, busy_timeout=to_seconds(busy_timeout, "busy_timeout"))
        self.engine = self.database.engine
        self.clock: Clock = clock or SystemClock()
        self.default_retry = default_retry
        self.lease_seconds = to_seconds(lease_seconds, "lease_seconds", positive=True)
        self.max_recoveries = max_recoveries
        self.tracker_config = tracker or TrackerConfig()
        self.registry = Registry()
        self.schedules: dict[str, scheduling.Schedule] = {}  # declared with ``schedule``, by name
        self.chains: dict[str, ChainAdapter] = {}
        for chain in chains:
            if chain.name in self.chains:
                raise ConfigurationError(f"two chains are named {chain.name!r}")
            self.chains[chain.name] = chain
        self.submitter: Submitter | None = None
        if self.tracker_config.batching:
            from ..chain import batcher

            batcher.check(self.chains, self.tracker_config.batching)
        if self.chains:
            from ..chain import submission

            self.submitter = submission.Submitter(self.database, self.chains, self.clock, self.tracker_config)
        # lifecycle events: metrics, log lines and this app's hooks (``on``)
        self.events = Events()
        self._workers: weakref.WeakSet[Worker] = weakref.WeakSet()
        self._waiters: dict[str, set[asyncio.Future[Any]]] = {}
        # bounded: lets await_run skip waiting for runs that finished before it was called
        self._recently_finished: OrderedDict[str, None] = OrderedDict()

    # --- registration ----------------------------------------------------------

    def workflow(
        self, name: str | None = None, *, timeout: float | dt.timedelta | None = None, input_type: type | None = None
    ) -> Callable[[F], F]:
        def register(fn: F) -> F:
            wf_name = limits.text(fn.__name__ if name is None else name, "workflow name", limits.WORKFLOW_NAME_LENGTH)
            limit = seconds(timeout, f"timeout of workflow {wf_name!r}", positive=True)
            declared = input_type if input_type is not None else infer_input_type(fn)
            self.registry.add(WorkflowDef(wf_name, fn, limit, declared))
            return fn

        return register

    def schedule(
        self, cron: str | None = None, *, every: float | dt.timedelta | None = None, name: str | None = None,
        workflow: str | None = None, input: Any = None, missed: str = "once", max_missed: int = 10,
        grace: float | dt.timedelta = 60.0, window: float | dt.timedelta = dt.timedelta(days=1),
        start: float | dt.datetime = 0.0, timezone: str = "UTC",
    ) -> Callable[[F], F]:
        """Start ``workflow`` with ``input`` at each fire of a cron expression (``cron``,
        five fields, in ``timezone``) or every ``every`` seconds (anchored at ``start``).
        Workers of this app fire it; each fire time starts exactly one run, with the
        idempotency key ``schedule:<name>:<fire time>``, however many workers run.

        Fires missed while no worker ran: ``missed="skip"`` (only fires at most
        ``grace`` late start), ``"once"`` (one run, for the latest) or ``"all"`` (each,
        at most ``max_missed``); fires older than ``window`` never start.

        ``name`` defaults to the workflow's.  Without ``workflow=`` it decorates a
        workflow function registered already (put it above ``@app.workflow()``)."""

        def add(wf_name: str) -> None:
            s = scheduling.declare(name, wf_name, input, cron=cron, every=every, start=start,
                                   timezone=timezone, missed=missed, max_missed=max_missed, grace=grace,
                                   window=window, registry=self.registry)
            if s.name in self.schedules:
                raise ConfigurationError(f"two schedules are named {s.name!r}; give one a name=")
            self.schedules[s.name] = s

        if workflow is not None:
            add(workflow)
            return lambda fn: fn

        def decorate(fn: F) -> F:
            registered = self.registry.name_of(fn)
            if registered is None:
                raise ConfigurationError(f"@schedule on {getattr(fn, '__qualname__', fn)!r}: not a registered "
                                         "workflow; put @app.schedule(...) above @app.workflow(), or pass workflow=")
            add(registered)
            return fn

        return decorate

    def list_schedules(self) -> list[ScheduleStatus]:
        """Every schedule some worker recorded, by name."""
        self.ensure_schema()
        return [ScheduleStatus(r.name, r.workflow, json.loads(r.spec), bool(r.paused), r.next_fire, r.last_fire,
                               r.last_run_id) for r in self.database.read(schedulestore.all_schedules)]

    def pause_schedule(self, name: str) -> None:
        """Stop firing ``name`` until ``resume_schedule``; its runs already started go on."""
        self._set_paused(limits.lookup(name, "pause_schedule(): name"), True)

    def resume_schedule(self, name: str) -> None:
        """Fire ``name`` again from its next fire time after now: the fires of the pause
        are not made up."""
        self._set_paused(limits.lookup(name, "resume_schedule(): name"), False)

    def _set_paused(self, name: str, paused: bool) -> None:
        self.ensure_schema()
        if not self.database.tx(schedulestore.set_paused, name, paused, self.clock.time()):
            raise ScheduleNotFoundError(name)

    # --- schema and plumbing ---------------------------------------------------

    def on(self, event: str) -> Callable[[Hook], Hook]:
        """Decorator: call ``fn(event)`` on each lifecycle event of that kind, for
        alerting: ``run_finished`` (or ``run_completed``, ``run_failed``,
        ``run_cancelled``, ``run_dead_lettered``), ``step_failed``, ``reorg_detected``,
        ``submission_stuck``, ``chain_stalled``... (``chainflow.events.LEVELS``).  Hooks
        run in the worker (or client call) that made the change; see ``chainflow.events``."""
        return self.events.on(event)

    def ensure_schema(self) -> None:
        self.database.ensure_schema()

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in one read-only transaction (for tools and extensions)."""
        return self.database.read(fn, *args)

    async def aread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in one read-only transaction, off the event loop."""
        return await self.database.aread(fn, *args)

    async def adb(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in one transaction, off the event loop."""
        return await self.database.atx(fn, *args)

    def attach(self, worker: Worker) -> None:
        self._workers.add(worker)

    def detach(self, worker: Worker) -> None:
        self._workers.discard(worker)

    def _notify(self) -> None:
        for w in list(self._workers):
            w.notify()

    # --- client API ------------------------------------------------------------

    def start(self, workflow: str, input: Any = None, *, idempotency_key: str | None = None) -> RunHandle:
        """Create a run (or return the existing one for the same idempotency key)."""
        fields = self._new_run(workflow, input, idempotency_key)
        local = next((w for w in list(self._workers) if w.reserve(workflow)), None)
        born, sent = self._born_claimed(local)

        def create(conn: sa.Connection) -> RunHandle:
            if idempotency_key is not None:
                existing = store.run_by_key(conn, idempotency_key)
                if existing is not None:
                    if not same_input(existing.input_hash, fields):
                        raise IdempotencyConflictError(idempotency_key, existing.id)
                    return RunHandle(existing.id, existing.workflow, False)
            run_id = store.insert_run(conn, **fields, **born)
            return RunHandle(run_id, workflow, True)

        try:
            try:
                handle = self.database.tx(create)
            except sa.exc.IntegrityError:
                # a concurrent start with the same key won the insert: answer as it would
                handle = self.database.tx(create)
        except BaseException:
            if local is not None:
                local.adopt(None)
            raise
        if local is not None:
            local.adopt(self._claim_of(handle.id, fields) if handle.created else None, sent)
        else:
            self._notify()
        if handle.created:
            self._started(handle)
        return handle

    async def astart(self, workflow: str, input: Any = None, *, idempotency_key: str | None = None) -> RunHandle:
        """``start`` for async code.  With a worker on this event loop the new run is
        written through that worker's group commit: no thread hop, and it shares its
        fsync with whatever else the worker is committing.  Born claimed while the
        worker has a free slot; due, for a later claim, while every slot is taken (many
        starts at once would otherwise each commit alone from a thread, queued on the
        database's writer).  Free slots a claim query holds are waited for by the
        ordinary start, in a thread, as they always were."""
        loop = asyncio.get_running_loop()
        fields = self._new_run(workflow, input, idempotency_key)
        local = next((w for w in list(self._workers) if w.loop is loop and w.creates(workflow)), None)
        claimed = local is not None and local.reserve(workflow)
        if local is not None and (claimed or local.full()):
            born, sent = self._born_claimed(local if claimed else None)
            row = store.run_row(**fields, **born)
            try:
                created, = (await local.committer.write(row["id"], None, [store.RunInsert(row)], exclusive=True))
            except BaseException:
                if claimed:
                    local.adopt(None)
                raise
            if claimed:
                local.adopt(self._claim_of(row["id"], fields) if created else None, sent)
            elif created:
                self._notify()
            if created:
                return self._started(RunHandle(row["id"], workflow, True))
            # the idempotency key is taken: the ordinary start answers (existing run or conflict)
        return await offload(functools.partial(self.start, workflow, input, idempotency_key=idempotency_key))

    def _started(self, handle: RunHandle) -> RunHandle:
        self.events.emit("run_started", run_id=handle.id, workflow=handle.workflow)
        return handle

    def _new_run(self, workflow: str, input: Any, idempotency_key: str | None) -> dict[str, Any]:
        """Validate and encode a start request: the fields of ``store.run_row``."""
        if idempotency_key is not None:
            limits.text(idempotency_key, "idempotency_key", limits.IDEMPOTENCY_KEY_LENGTH)
        fields = self.registry.get(workflow).new_run(input, idempotency_key, self.clock.time())
        self.ensure_schema()
        return fields

    def _born_claimed(self, local: Worker | None) -> tuple[dict[str, Any], float]:
        """The lease of a run born claimed by ``local``, and ``time.monotonic()`` read
        before its expiry was: the worker's own deadline for it never outlasts it."""
        sent = time.monotonic()
        if local is None:
            return {}, sent
        return dict(lease_owner=local.id, lease_until=self.clock.time() + local.lease), sent

    @staticmethod
    def _claim_of(run_id: str, fields: dict[str, Any]) -> store.Claim:
        return store.Claim(run_id, fields["workflow"], fields["input_text"], 1, False, fields["deadline"],
                           fields["now"])

    @staticmethod
    def _stored_run(conn: sa.Connection, run_id: str) -> sa.Row[Any]:
        """The run's row, or ``RunNotFoundError``: every read of one run says so for an id
        never stored, not an empty list that reads as "no attempts" or "no forks"."""
        row = store.get_run(conn, run_id)
        if row is None:
            raise RunNotFoundError(run_id)
        return row

    def _live_run(self, conn: sa.Connection, run_id: str, action: str) -> sa.Row[Any]:
        row = self._stored_run(conn, run_id)
        if row.status in TERMINAL:
            raise RunFinishedError(run_id, row.status, action)
        return row

    def signal(self, run_id: str, name: str, payload: Any = None) -> None:
        limits.lookup(run_id, "signal(): run_id")
        limits.text(name, "signal name", limits.SIGNAL_LENGTH)
        text = codec.dumps(payload, what=f"payload of signal {name!r}")

        def send(conn: sa.Connection) -> None:
            self._live_run(conn, run_id, f"signal {name!r} to")
            store.insert_signal(conn, run_id, name, text, self.clock.time())

        self.database.tx(send)
        self._notify()

    async def asignal(self, run_id: str, name: str, payload: Any = None) -> None:
        await offload(self.signal, run_id, name, payload)

    def cancel(self, run_id: str) -> None:
        limits.lookup(run_id, "cancel(): run_id")

        def request(conn: sa.Connection) -> None:
            self._live_run(conn, run_id, "cancel")
            store.request_cancel(conn, run_id, self.clock.time())

        self.database.tx(request)
        self._notify()

    async def acancel(self, run_id: str) -> None:
        await offload(self.cancel, run_id)

    def retry(self, run_id: str) -> None:
        """Put a dead-lettered run back to pending with its recovery count reset; it
        resumes from its journal (steps that succeeded are not run again).  One that was
        forked is refused (``RunForkedError``): its fork runs the same steps."""
        limits.lookup(run_id, "retry(): run_id")

        def reopen(conn: sa.Connection) -> None:
            row = self._stored_run(conn, run_id)
            store.lock_runs(conn, [run_id])  # before looking for forks, as a fork locks it
            forks = [f.id for f in store.forks_of(conn, run_id)]
            if forks and row.status == RunState.DEAD_LETTERED:
                raise RunForkedError(run_id, forks)
            if not store.retry_dead_lettered(conn, run_id, self.clock.time()):
                raise RunNotDeadLetteredError(run_id, row.status)

        self.database.tx(reopen)
        self._notify()

    async def aretry(self, run_id: str) -> None:
        await offload(self.retry, run_id)

    def status(self, run_id: str) -> RunStatus:
        limits.lookup(run_id, "status(): run_id")

        def read(conn: sa.Connection) -> RunStatus:
            row = self._stored_run(conn, run_id)
            served = None if row.status in TERMINAL else store.served_workflows(conn, self.clock.time())
            return _status_of(row, store.compensations(conn, run_id), served)

        return self.database.read(read)

    async def astatus(self, run_id: str) -> RunStatus:
        return await offload(self.status, run_id)

    def children(self, run_id: str) -> list[RunStatus]:
        """The child runs ``run_id`` started (``ctx.child``), oldest first; a slot a reorg
        rolled back may have had an earlier, cancelled child."""
        limits.lookup(run_id, "children(): run_id")

        def read(conn: sa.Connection) -> list[RunStatus]:
            self._stored_run(conn, run_id)
            return [_status_of(r, {}) for r in store.children(conn, run_id)]

        return self.database.read(read)

    def journal(self, run_id: str) -> list[JournalEntry]:
        """Every journal row of a run, invalidated ones included, in recording order."""
        limits.lookup(run_id, "journal(): run_id")

        def read(conn: sa.Connection) -> list[JournalEntry]:
            self._stored_run(conn, run_id)
            return [
                JournalEntry(
                    r.branch, r.position, r.key, r.kind,
                    EntryState.INVALIDATED if r.superseded else EntryState(r.status),
                    codec.loads(r.output) if r.status == EntryState.OK else None,
                    json.loads(r.error) if r.error else None, r.attempts, r.started_at, r.finished_at,
                    bool(r.superseded), r.reason,
                )
                for r in store.journal_rows(conn, run_id)
            ]

        return self.database.read(read)

    async def ajournal(self, run_id: str) -> list[JournalEntry]:
        return await offload(self.journal, run_id)

    def attempts(self, run_id: str) -> list[AttemptRecord]:
        """Every failed attempt of the run's steps, in recording order (``RunNotFoundError``
        for an id never stored, as ``journal``)."""
        limits.lookup(run_id, "attempts(): run_id")

        def read(conn: sa.Connection) -> list[AttemptRecord]:
            self._stored_run(conn, run_id)
            return [
                AttemptRecord(a.branch, a.key, a.attempt, json.loads(a.error) if a.error else None,
                              a.started_at, a.finished_at, a.next_at)
                for a in store.attempt_rows(conn, run_id)
            ]

        return self.database.read(read)

    def runs(self, *, status: RunState | str | None = None, workflow: str | None = None, limit: int = 100,
             since: float | dt.datetime | None = None, until: float | dt.datetime | None = None,
             before: tuple[float, str] | None = None) -> list[RunStatus]:
        """The newest ``limit`` runs, of one ``status`` (a ``RunState`` or its text) and
        ``workflow`` when given, created in [``since``, ``until``) (epoch seconds or
        timezone-aware datetimes).  ``before``: the (created_at, id) of the last run of
        the previous page; the next page starts below it (keyset pagination: as fast at
        the millionth run)."""
        state = None if status is None else run_state(status, "runs(): status")
        if workflow is not None:
            limits.lookup(workflow, "runs(): workflow")
        _page_size(limit, "runs()")
        start = None if since is None else to_epoch(since, "runs(): since")
        end = None if until is None else to_epoch(until, "runs(): until")
        cursor = None if before is None else _cursor(before)

        def read(conn: sa.Connection) -> list[RunStatus]:
            rows = store.list_runs(conn, state, workflow, limit, since=start, until=end, before=cursor)
            return self._statuses(conn, rows)

        return self.database.read(read)

    def forks(self, run_id: str) -> list[RunStatus]:
        """The runs forked from ``run_id`` (``fork``), oldest first (``RunNotFoundError``
        for an id never stored, as ``journal``)."""
        limits.lookup(run_id, "forks(): run_id")

        def read(conn: sa.Connection) -> list[RunStatus]:
            self._stored_run(conn, run_id)
            return self._statuses(conn, store.forks_of(conn, run_id))

        return self.database.read(read)

    def _statuses(self, conn: sa.Connection, rows: list[sa.Row[Any]]) -> list[RunStatus]:
        live = any(r.status not in TERMINAL for r in rows)
        served = store.served_workflows(conn, self.clock.time()) if live else None
        return [_status_of(r, {}, served) for r in rows]

    def reorgs(self, chain: str | None = None, limit: int = 100) -> list[ReorgEvent]:
        """Reorg events the trackers recorded, newest first."""
        if chain is not None:
            limits.lookup(chain, "reorgs(): chain")
        rows = self.database.read(chainstore.reorg_events, chain, _page_size(limit, "reorgs()"))
        return [ReorgEvent(r.id, r.chain, r.depth, r.fork_number, json.loads(r.old_hashes),
                           json.loads(r.new_hashes), json.loads(r.affected), r.detected_at) for r in rows]

    def wait(self, run_id: str, timeout: float | None = None, poll: float = 0.05) -> RunStatus:
        """Block until the run is finished (for scripts and tests; real time)."""
        import time

        limits.lookup(run_id, "wait(): run_id")
        seconds(timeout, "wait timeout")
        to_seconds(poll, "wait poll", positive=True)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(run_id)
            if st.done:
                return st
            if end is not None and time.monotonic() > end:
                raise TimeoutError(f"run {run_id!r} still {st.status} after {timeout}s")
            time.sleep(poll)

    async def await_run(self, run_id: str, timeout: float | None = None, poll: float = 0.5) -> RunStatus:
        """Wait for the run to finish: woken at once by a worker of this process that
        finishes it, re-checking the database every ``poll`` s for runs finished elsewhere."""
        limits.lookup(run_id, "await_run(): run_id")
        seconds(timeout, "await_run timeout")
        to_seconds(poll, "await_run poll", positive=True)
        loop = asyncio.get_running_loop()
        end = None if timeout is None else loop.time() + timeout
        # each call listens on a future of its own and awaits it directly: a cancelled
        # caller cancels only its own, and a finish wakes it in one loop round
        listeners = self._waiters.setdefault(run_id, set())
        news: asyncio.Future[Any] = loop.create_future()
        listeners.add(news)
        read_first = run_id in self._recently_finished  # finished before we started waiting
        try:
            while True:
                if not read_first:
                    if not news.done():
                        left = None if end is None else max(0.0, end - loop.time())
                        timer = loop.call_later(poll if left is None else min(poll, left), _resolve, news, _QUIET)
                        try:
                            await news
                        finally:
                            timer.cancel()
                    known = news.result()
                    if isinstance(known, RunStatus):
                        return known  # as the finishing worker wrote it: no read needed
                    # listen afresh before reading: a finish during the read, or after a
                    # reorg reopened the run, wakes the next turn
                    listeners.discard(news)
                    news = loop.create_future()
                    listeners.add(news)
                read_first = False
                st = await self.astatus(run_id)
                if st.done:
                    return st
                if end is not None and loop.time() >= end:
                    raise TimeoutError(f"run {run_id!r} still {st.status} after {timeout}s")
        finally:
            listeners.discard(news)
            if not listeners and self._waiters.get(run_id) is listeners:
                del self._waiters[run_id]

    def finished(self, run_id: str, row: Any = None, compensations: dict[str, EntryState] | None = None) -> None:
        """A worker of this process finished ``run_id``: wake whoever awaits it, handing
        over the final status when the worker knows all of it (``row`` as written and
        ``compensations``)."""
        self._recently_finished[run_id] = None
        while len(self._recently_finished) > 10_000:
            self._recently_finished.popitem(last=False)
        listeners = self._waiters.get(run_id)
        if listeners:
            known = None if row is None or compensations is None else _status_of(row, compensations)
            for news in list(listeners):  # a copy: awaiters on other loops change the set
                call_on(news.get_loop(), _resolve, news, known)

    # --- time travel (``chainflow.replay``) --------------------------------------------

    def replay(self, run: str | History, *, overrides: Mapping[str, StepCode] | None = None,
               workflow: WorkflowCode = None, pure: Iterable[str] = (), allow_effects: bool = False) -> RunReport:
        """What run ``run`` (an id, or a ``History`` from ``export``) would have done with
        other code, compared step by step with what it did; writes nothing, sends
        nothing.  ``overrides``: step name -> new function (an ``Override`` marks it
        pure); ``workflow``: another workflow function; ``pure``: step names whose code
        may run where history holds no output; ``allow_effects``: run effectful new
        code too (otherwise reported as "would run")."""
        return self._run_async(self.areplay(run, overrides=overrides, workflow=workflow, pure=pure,
                                            allow_effects=allow_effects))

    async def areplay(self, run: str | History, *, overrides: Mapping[str, StepCode] | None = None,
                      workflow: WorkflowCode = None, pure: Iterable[str] = (),
                      allow_effects: bool = False) -> RunReport:
        from . import timetravel

        if not isinstance(run, timetravel.History):
            limits.lookup(run, "replay(): run, when not a History,")
        return await timetravel.replay_one(self, run, overrides=overrides, workflow=workflow, pure=pure,
                                           allow_effects=allow_effects)

    def replay_sweep(self, *, workflow_name: str | None = None, status: RunState | str | None = None,
                     since: float | dt.datetime | dt.timedelta | None = None, sample: int | None = None,
                     overrides: Mapping[str, StepCode] | None = None, workflow: WorkflowCode = None,
                     pure: Iterable[str] = (), allow_effects: bool = False,
                     progress: Progress | None = None) -> SweepReport:
        """``replay`` over every run matching the filters (``since``: epoch seconds, a
        datetime, or a timedelta back from now), or a random ``sample`` of them."""
        return self._run_async(self.areplay_sweep(
            workflow_name=workflow_name, status=status, since=since, sample=sample, overrides=overrides,
            workflow=workflow, pure=pure, allow_effects=allow_effects, progress=progress))

    async def areplay_sweep(self, *, workflow_name: str | None = None, status: RunState | str | None = None,
                            since: float | dt.datetime | dt.timedelta | None = None, sample: int | None = None,
                            overrides: Mapping[str, StepCode] | None = None, workflow: WorkflowCode = None,
                            pure: Iterable[str] = (), allow_effects: bool = False,
                            progress: Progress | None = None) -> SweepReport:
        from . import timetravel

        ids = await offload(functools.partial(timetravel.select, self, "replay_sweep()", workflow_name=workflow_name,
                                              status=status, since=since, sample=sample))
        return await timetravel.sweep(self, ids, overrides=overrides, workflow=workflow, pure=pure,
                                      allow_effects=allow_effects, progress=progress)

    def export(self, run_id: str) -> str:
        """The run's whole history as versioned JSON (``chainflow export``): what
        ``replay`` and ``chainflow.testing.replay_history`` take back."""
        from . import timetravel

        return timetravel.export(self, limits.lookup(run_id, "export(): run_id"))

    def fork(self, run_id: str, *, from_step: str | None = None, from_failed: bool = False,
             after: float | dt.datetime | None = None,
             overrides: Mapping[str, Callable[..., Any] | str] | None = None,
             workflow: Callable[..., Any] | str | None = None) -> RunHandle:
        """A new live run (``parent_id`` = ``run_id``) that reuses the source's recorded
        outputs before the fork point and executes from there, with ``overrides``
        (step name -> function or "module:function", importable by the workers) or
        another ``workflow``.  Point: ``from_step`` ("name", "name#2", "branch/name"),
        ``from_failed`` or ``after`` a time.  A submission with a key the source used
        resolves to the source's submission: paying again needs a new key."""
        from . import timetravel

        limits.lookup(run_id, "fork(): run_id")
        fork_id, name = timetravel.fork_one(self, run_id, _fork_point(from_step, from_failed, after, "fork()"),
                                            overrides, workflow)
        self._notify()
        return self._started(RunHandle(fork_id, name, True))

    def fork_many(self, *, workflow_name: str | None = None, status: RunState | str | None = None,
                  since: float | dt.datetime | dt.timedelta | None = None, from_step: str | None = None,
                  from_failed: bool = False, after: float | dt.datetime | None = None,
                  overrides: Mapping[str, Callable[..., Any] | str] | None = None,
                  workflow: Callable[..., Any] | str | None = None,
                  progress: Progress | None = None) -> ForkSummary:
        """``fork`` every run matching the filters, each once: running it again after an
        interruption skips the sources already forked.  Forks are never selected (the
        forks of an earlier pass match its filters too): fork a fork with ``fork``."""
        from . import timetravel

        point = _fork_point(from_step, from_failed, after, "fork_many()")
        ids = timetravel.select(self, "fork_many()", workflow_name=workflow_name, status=status, since=since,
                                forks=False)
        summary = timetravel.fork_many(self, ids, point, overrides, workflow, progress)
        self._notify()
        return summary

    def _run_async(self, work: Coroutine[Any, Any, T]) -> T:
        """``work`` on an event loop of its own (the sync twin of an async method),
        closing the chains' sessions bound to that loop."""

        async def main() -> T:
            try:
                return await work
            finally:
                for chain in self.chains.values():
                    await chain.aclose()

        return asyncio.run(main())

    # --- workers ---------------------------------------------------------------

    def worker(self, **options: Any) -> Worker:
        from ..runtime.worker import Worker

        return Worker(self, **options)

    def run_worker(self, concurrency: int = 32, **options: Any) -> None:
        """Run a worker in this thread until SIGINT/SIGTERM: the process is a worker
        from now on (``freeze_heap``).  The first signal stops it gracefully
        (``Worker.close``), a second one stops its waiting for steps in threads."""
        from ..runtime.worker import freeze_heap

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            worker = self.worker(concurrency=concurrency, **options)

            def signalled() -> None:
                if stop.is_set():
                    worker.hurry()
                stop.set()

            for sig in (_signal.SIGINT, _signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, signalled)
                except (NotImplementedError, RuntimeError):
                    pass
            await worker.run(stop)

        freeze_heap()
        asyncio.run(main())


_QUIET = object()  # an await_run turn ended with no word from a worker


def _resolve(news: asyncio.Future[Any], known: RunStatus | object | None) -> None:
    if not news.done():
        news.set_result(known)


def _fork_point(step: str | None, failed: bool, after: float | dt.datetime | None, method: str) -> Any:
    from ..replay.fork import ForkPoint

    return ForkPoint(step, failed, None if after is None else to_epoch(after, f"{method}: after"))


def _page_size(limit: Any, method: str) -> int:
    """``limit`` if it is an int >= 1, as the CLI's ``--limit`` must be: SQLite reads
    ``LIMIT -1`` as no limit and Postgres refuses it with a raw ``DataError``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{method}: limit must be an int >= 1, got {limit!r}")
    return limit


def _cursor(before: Any) -> tuple[float, str]:
    """``runs(before=)`` checked: a page's position, not a lookup that could answer
    "none", so a run id no page can have handed out (one with a NUL) is refused too."""
    if not isinstance(before, (tuple, list)) or len(before) != 2:
        raise TypeError(f"runs(): before must be the (created_at, run id) of the last run of the previous page, "
                        f"got {before!r}")
    created = to_epoch(before[0], "runs(): before's created_at")
    run_id = limits.lookup(before[1], "runs(): before's run id")
    if limits.unstorable(run_id):
        raise ValueError(f"runs(): before (created_at, run id) names a run id with a NUL character, which no run "
                         f"id holds: {run_id[:40]!r}")
    return created, run_id


def _status_of(row: sa.Row[Any], comps: dict[str, EntryState], served: set[str] | None = None) -> RunStatus:
    """``served``: the workflows live workers announce (None: not looked up)."""
    return RunStatus(
        id=row.id, workflow=row.workflow, status=RunState(row.status), input=codec.loads(row.input),
        output=codec.loads(row.output), error=json.loads(row.error) if row.error else None,
        created_at=row.created_at, updated_at=row.updated_at, wake_at=row.ready_at,
        waiting_on=json.loads(row.waiting_on) if row.waiting_on else [],
        cancel_requested=bool(row.cancel_requested), compensations=comps,
        rollback=json.loads(row.rollback) if row.rollback else None,
        unserved=served is not None and row.status not in TERMINAL and row.workflow not in served,
        parent=row.parent_id if row.parent_slot is not None else None, parent_step=row.parent_slot,
        forked_from=row.parent_id if row.parent_slot is None else None,
    )
