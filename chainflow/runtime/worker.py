"""The worker: claims due runs under a lease, executes them, keeps leases alive.

A worker holds no state that matters: everything is in the database, so a worker can
be SIGKILLed at any instant and another one (on any machine) resumes its runs once the
lease expires.  Fencing makes the dead worker's late writes, should it come back from
a long GC pause, fail instead of corrupting the journal.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa

from ..chain.adapter import ChainAdapter
from ..chain.submission import Submitter
from ..chain.tracker_config import TrackerConfig
from ..clock import Clock, to_seconds
from ..errors import RunDeadLettered, describe_error, summary
from ..events import Events
from ..lease import Lease
from ..lograte import FailureLog
from ..retry import Retry
from ..states import TERMINAL, EntryState, RunState
from ..storage import limits, store
from ..storage.connector import is_local
from ..storage.database import Database
from ..threads import ThreadPool, offload
from .committer import Committer
from .executor import Execution, Outcome, Unfinished
from .registry import Registry
from .schedules import Schedule, Scheduler
from .scope import StopReason

log = logging.getLogger("chainflow.worker")
T = TypeVar("T")

# seconds a stopping worker waits for steps running in threads (``Worker.close``):
# below the 30 s Kubernetes gives a pod between SIGTERM and SIGKILL
SHUTDOWN_GRACE = 25.0


def freeze_heap() -> None:
    """Exempt everything alive now from the garbage collector's scans.

    A worker process's modules (web3, SQLAlchemy, eth-account, ...) and its app make
    up most of its heap and live as long as it does, yet every full collection walked
    them again: on the on-chain benchmark 1.1 s of a 1,000-mint run's 8 s, each one
    stalling the event loop for ~0.2 s.  Called once a process has loaded what it
    runs (``Chainflow.run_worker``, so ``chainflow worker``); garbage made afterwards
    is collected as before, and what was frozen is still freed when unreferenced."""
    gc.collect()
    gc.freeze()


class WorkerHost(Protocol):
    """What a worker needs from the app it serves (``Chainflow`` provides it): its
    settings, its workflows and chains, and a way to tell it about runs it finished.
    The app registers the worker (``attach``) rather than the worker knowing the app's
    class, so the runtime stays below the client."""

    database: Database
    clock: Clock
    lease_seconds: float
    default_retry: Retry
    max_recoveries: int
    registry: Registry
    chains: dict[str, ChainAdapter]
    tracker_config: TrackerConfig
    submitter: Submitter | None
    schedules: dict[str, Schedule]
    events: Events

    def attach(self, worker: Worker) -> None: ...

    def detach(self, worker: Worker) -> None: ...

    def finished(self, run_id: str, row: Any = None,
                 compensations: dict[str, EntryState] | None = None) -> None: ...


def _default_id() -> str:
    """host:pid:random, the host name cut to fit the column (a long FQDN would not): the
    random part keeps ids unique, the host and pid say where to look."""
    rest = f":{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return socket.gethostname()[:limits.WORKER_ID_LENGTH - len(rest)] + rest


class Worker:
    _RESERVE_PATIENCE = 0.05  # s a start waits for a claim in flight to hand back slots
    _ABANDON_PATIENCE = 1.0  # s a worker that stopped waiting gives its executions to end

    def __init__(
        self,
        app: WorkerHost,
        *,
        concurrency: int = 32,
        lease: float | None = None,
        poll_interval: float = 0.2,
        inline_wait: float = 1.0,
        worker_id: str | None = None,
        track: bool = True,
        commit_in_thread: bool | None = None,
        shutdown_grace: float = SHUTDOWN_GRACE,
    ) -> None:
        if not isinstance(concurrency, int) or isinstance(concurrency, bool):
            raise TypeError(f"Worker concurrency must be an int, got {concurrency!r}")
        if concurrency < 1:
            raise ValueError(f"Worker concurrency must be >= 1, got {concurrency!r}")
        self.app = app
        self.clock = app.clock
        self.default_retry = app.default_retry
        self.submitter = app.submitter
        self.registry = app.registry
        self.events = app.events
        self.concurrency = concurrency
        self.lease = to_seconds(app.lease_seconds if lease is None else lease, "Worker lease", positive=True)
        self.poll_interval = to_seconds(poll_interval, "Worker poll_interval", positive=True)
        self.inline_wait = to_seconds(inline_wait, "Worker inline_wait")
        self.shutdown_grace = to_seconds(shutdown_grace, "Worker shutdown_grace")
        self.id = _default_id() if worker_id is None else limits.text(worker_id, "worker_id", limits.WORKER_ID_LENGTH)
        # None: commit on the loop for a database on this machine, in a thread otherwise
        far = not is_local(app.database.engine.url) if commit_in_thread is None else commit_in_thread
        self.committer = Committer(app.database.engine, running=lambda: len(self.executions), in_thread=far)
        self.step_pool = ThreadPool(max(4, concurrency), "chainflow-step")
        self._db_pool = ThreadPool(2, "chainflow-db")
        self.executions: dict[str, Execution] = {}
        # how recent executions ended (bounded: a long-lived worker must not grow)
        self.outcomes: OrderedDict[str, Outcome] = OrderedDict()
        self._tasks: set[asyncio.Task[Outcome | None]] = set()
        self._wake = asyncio.Event()
        self._heartbeat: threading.Thread | None = None
        self._beat_stop = threading.Event()
        self._announcer: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop the worker runs on
        self._slots = threading.Condition()
        self._reserved = 0
        self._claiming = 0  # of ``_reserved``: slots held by a claim query in flight
        self._loop_thread: int | None = None
        self._backlog = False  # the last claim filled every free slot: more may be due
        self.track = track  # run a (leader-elected) head follower per configured chain
        self._trackers: list[asyncio.Task[None]] = []
        self._scheduler: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()  # stop waiting for the runs in flight (``hurry``)
        self._claim_failures = FailureLog(log, "claiming runs")
        self._beat_failures = FailureLog(log, "heartbeat")
        self._announce_failures = FailureLog(log, "announcing this worker")

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one transaction off the event loop."""

        return await self._db_pool.run(functools.partial(self.app.database.tx, fn, *args))

    async def _offload(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._db_pool.run(functools.partial(fn, *args))

    def notify(self) -> None:
        """Something became due (a start or signal in this process): poll now.

        Thread-safe: a sync web view in another thread may be the caller."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        # beating before the first run is adopted: nothing on the loop can delay it
        self._heartbeat = threading.Thread(target=self._beat, name=f"chainflow-heartbeat-{self.id}", daemon=True)
        self._heartbeat.start()
        # attached as soon as it has a loop: a start from now on is adopted or notifies
        # this worker, never falls between its attaching and its first claim
        self.app.attach(self)
        await self._db_pool.run(self.app.database.ensure_schema)
        await self._announce()
        self._announcer = asyncio.create_task(self._keep_announcing(), name="chainflow-announce")
        if self.app.schedules:
            scheduler = Scheduler(self.app.database, self.clock, self.app.registry, self.app.schedules, self.notify)
            self._scheduler = asyncio.create_task(scheduler.run(self._stopping, self._offload), name="scheduler")
        log.info("worker %s started: concurrency %d, lease %gs, workflows: %s, chains followed: %s", self.id,
                 self.concurrency, self.lease, ", ".join(sorted(self.app.registry.names())) or "-",
                 ", ".join(self.app.chains) if self.track and self.app.chains else "-")
        if self.track:
            from ..chain import chainstore
            from ..chain.tracker import Tracker

            stranded = await self._offload(self.app.database.read, chainstore.unfollowed, list(self.app.chains))
            for chain, count in sorted(stranded.items()):
                log.warning("%d unsettled submission(s) on chain %r, which this app does not configure: nothing "
                            "follows them, and their runs wait for good (a chain renamed or dropped?)", count, chain)

            for adapter in self.app.chains.values():
                tracker = Tracker(self.app.database, self.clock, adapter, self.id, self.app.tracker_config,
                                  self.events, wake=self._wake.set)
                self._trackers.append(asyncio.create_task(tracker.run(self._stopping), name=f"tracker-{adapter.name}"))

    async def close(self) -> None:
        """Stop claiming and hand the runs in flight back (``_wind_down``), so that
        other workers need not wait for their leases to expire."""
        self.app.detach(self)
        self._stopping.set()
        await asyncio.gather(*self._trackers, *filter(None, [self._scheduler]), return_exceptions=True)
        if self._announcer:
            self._announcer.cancel()
        # taken before stopping: each execution leaves ``executions`` as it unwinds
        held = list(self.executions)
        log.info("worker %s stopping: handing back %d run(s) in flight", self.id, len(held))
        kept = await self._wind_down()
        self._beat_stop.set()
        if self._heartbeat:
            await offload(self._heartbeat.join)  # it may be inside a database call
        await self.committer.close()
        # those not handed back already (an execution abandoned, or one that crashed)
        released = [run_id for run_id in held if run_id not in kept]
        if released:
            await self.db(store.release_runs, released, self.id, self.clock.time())
        if self._announcer:
            await asyncio.gather(self._announcer, return_exceptions=True)
            try:
                await self.db(store.retire_worker, self.id)
            except Exception:  # its announcement expires on its own
                log.warning("could not retire worker %s from cf_workers", self.id, exc_info=True)
        for adapter in self.app.chains.values():
            await adapter.aclose()  # HTTP sessions are bound to this event loop
        self.step_pool.shutdown(wait=False)
        self._db_pool.shutdown(wait=True)
        log.info("worker %s stopped", self.id)

    async def _wind_down(self) -> set[str]:
        """Stop the executions and wait for each to hand its run back, the heartbeat
        still renewing their leases.  Most do so at once; one with a step in a thread
        (which nothing can stop) first lets it finish and journals it (``Execution``).
        At most ``shutdown_grace`` seconds, or until ``hurry``: then the runs still
        waiting for a thread are left leased (they expire as after a crash: released,
        another worker would start the step while its thread still runs here), and the
        others are abandoned (released below).  Returns the runs left leased."""
        for ex in list(self.executions.values()):
            ex.request_stop(StopReason.SHUTDOWN)
        if not self._tasks:
            return set()
        busy = sum(1 for ex in self.executions.values() if ex.threads)
        if busy:
            log.info("worker %s: waiting up to %gs for %d run(s) with a step running in a thread", self.id,
                     self.shutdown_grace, busy)
        everything = asyncio.ensure_future(asyncio.wait(set(self._tasks)))
        hurried = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait({everything, hurried}, timeout=self.shutdown_grace, return_when=asyncio.FIRST_COMPLETED)
        everything.cancel()
        hurried.cancel()
        if not self._tasks:
            return set()
        kept = {run_id for run_id, ex in self.executions.items() if ex.threads}
        log.warning("worker %s: stops waiting for %d run(s) (%s); left leased, since a step of theirs still "
                    "runs in a thread here: %s; another worker resumes them once their lease (%gs) expires, "
                    "as after a crash", self.id, len(self._tasks),
                    "hurried" if self._hurry.is_set() else f"grace of {self.shutdown_grace:g}s over",
                    ", ".join(sorted(kept)) or "none", self.lease)
        for ex in list(self.executions.values()):
            ex.request_stop(StopReason.LEASE_LOST)
        # they end at once (nothing is written); one still waiting is cancelled
        _, pending = await asyncio.wait(set(self._tasks), timeout=self._ABANDON_PATIENCE)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=self._ABANDON_PATIENCE)
        return kept

    def hurry(self) -> None:
        """Stop waiting for the runs in flight to wind down (``close``; a second
        SIGINT/SIGTERM to ``chainflow worker``).  Thread-safe."""
        if self.loop is not None and not self.loop.is_closed():
            call_on(self.loop, self._hurry.set)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Work until ``stop`` is set (or forever)."""
        stop = stop or asyncio.Event()
        await self.start()
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._wake.clear()  # before the claim: a wake-up arriving during it polls again at once
                try:
                    claimed = await self.poll()
                except Exception as exc:  # database unreachable for a moment: keep the worker alive
                    self._claim_failures.failed(exc, f"failed; retrying every {self.poll_interval:g}s")
                    claimed = 0
                else:
                    self._claim_failures.recovered()
                if claimed and len(self.executions) < self.concurrency:
                    continue
                waker = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({stopper, waker}, timeout=self.poll_interval, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
        finally:
            stopper.cancel()
            await self.close()

    async def poll(self) -> int:
        """Claim what is due (up to free slots) and start executing it."""
        # the slots being claimed stay reserved while the claim is in flight: a local
        # start (``reserve``, another thread) must not take one of them meanwhile, or
        # the worker ends up running more than ``concurrency`` runs
        with self._slots:
            free = self.concurrency - len(self.executions) - self._reserved
            if free <= 0:
                return 0
            self._reserved += free
            self._claiming = free
        claims: list[tuple[store.Claim, store.History]] = []
        sent = time.monotonic()  # the leases run from here: the claim reads ``now`` later
        try:
            claims = await self.db(store.claim_with_history, self.id, free, self.clock.time(), self.lease,
                                   self.app.registry.names())
        finally:
            with self._slots:  # release and occupy in one step, as seen by ``reserve``
                self._reserved -= free
                self._claiming = 0
                for claim, history in claims:
                    self._spawn(claim, history, sent)
                self._backlog = len(claims) == free
                self._slots.notify_all()
        for claim, _ in claims:
            self.events.emit("run_claimed", run_id=claim.run_id, workflow=claim.workflow, attempt=claim.claims)
        return len(claims)

    async def drain(self) -> None:
        """Run everything due now to completion or suspension (tests, benchmarks)."""
        while await self.poll() or self._tasks or self._reserved:
            if self._tasks:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(0)  # adoptions scheduled from another thread land first

    def creates(self, workflow: str) -> bool:
        """Whether this worker runs ``workflow`` and takes new runs now (started, not
        stopping): a start on its loop may then write the run through its group commit."""
        return self.loop is not None and not self._stopping.is_set() and workflow in self.app.registry

    def full(self) -> bool:
        """Whether every run slot is taken by an execution or a start's reservation (not
        merely held by a claim query in flight, which gives back what it does not use)."""
        with self._slots:
            return len(self.executions) + self._reserved - self._claiming >= self.concurrency

    def reserve(self, workflow: str) -> bool:
        """Take a slot for a run this process is about to create (start fast path).

        A claim query in flight holds the free slots until it returns; a start from
        another thread waits for it (a few ms) rather than leaving its run to the next
        claim, which would cost a claim round trip per run."""
        with self._slots:
            if not self.creates(workflow):
                return False
            patience = 0.0 if threading.get_ident() == self._loop_thread else self._RESERVE_PATIENCE
            until = time.monotonic() + patience
            while len(self.executions) + self._reserved >= self.concurrency:
                left = until - time.monotonic()
                if not self._claiming or left <= 0:
                    return False
                self._slots.wait(left)
            self._reserved += 1
            return True

    def adopt(self, claim: store.Claim | None, sent: float = -math.inf) -> None:
        """Run a run born claimed by this worker; None gives back an unused reservation.

        ``sent``: ``time.monotonic()`` read before the run's ``lease_until`` was; left
        unknown, its first step asks the database whether the lease still holds."""
        def take() -> None:
            with self._slots:
                self._reserved -= 1
                if claim is not None:
                    self._spawn(claim, ([], {}), sent)

        assert self.loop is not None
        call_on(self.loop, take)

    def _spawn(self, claim: store.Claim, history: store.History, sent: float) -> None:
        if claim.recoveries > self.app.max_recoveries:
            self._track(self._dead_letter(claim, claim.recoveries), f"chainflow-dead-letter-{claim.run_id}")
            return
        # claims only take runs of registered workflows, and a registry only grows
        wf = self.app.registry.get(claim.workflow)
        ex = Execution(self, claim, wf, history, Lease(claim.run_id, claim.fence, sent, self.lease, self._check))
        stale = self.executions.get(claim.run_id)
        if stale is not None:
            # this worker's own earlier execution, whose lease lapsed (a database outage
            # longer than the lease): the new claim's fence proves it is over
            stale.request_stop(StopReason.LEASE_LOST)
        self.executions[claim.run_id] = ex
        self._track(self._execute(ex), f"chainflow-run-{claim.run_id}")

    def _track(self, work: Coroutine[Any, Any, Outcome | None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, ex: Execution) -> Outcome | None:
        run_id, workflow = ex.claim.run_id, ex.claim.workflow
        self.events.emit("run_executing", run_id=run_id, workflow=workflow, attempt=ex.claim.claims)
        try:
            outcome = await ex.run()
            self.outcomes[ex.claim.run_id] = outcome
            if len(self.outcomes) > 10_000:
                self.outcomes.popitem(last=False)
            self._report(ex.claim, outcome)
            if outcome.status in TERMINAL:
                if outcome.row is not None and outcome.row.status not in TERMINAL:
                    return outcome  # reopened by a reorg as it finished: not over yet
                self.app.finished(ex.claim.run_id, outcome.row, outcome.compensations)
            return outcome
        except asyncio.CancelledError:  # the worker is stopping: the run is released
            self.events.emit("run_abandoned", run_id=run_id, workflow=workflow, status="released")
            raise
        except Exception as exc:
            self.events.emit("run_abandoned", run_id=run_id, workflow=workflow, status="crashed", error=summary(exc))
            await self._crashed(ex.claim, exc)
            return None
        finally:
            # a freed slot is worth an immediate poll only if the last claim left work
            # queued; otherwise the poll interval and local notifications suffice, and a
            # needless claim in flight would push a local start off its fast path
            if self._backlog:
                self._wake.set()
            if self.executions.get(ex.claim.run_id) is ex:  # not a newer execution of the same run
                del self.executions[ex.claim.run_id]

    def _report(self, claim: store.Claim, outcome: Outcome) -> None:
        """The lifecycle event of how an execution ended (``chainflow.events``)."""
        status, row = outcome.status, outcome.row
        if status in TERMINAL:
            if row is not None and row.status not in TERMINAL:
                kind, status = "run_rolled_back", RunState.PENDING
            else:
                kind = f"run_{status}"
            duration = None if row is None else row.updated_at - row.created_at
            self.events.emit(kind, run_id=claim.run_id, workflow=claim.workflow, status=status, duration=duration,
                             error=summary(outcome.detail) if status != RunState.COMPLETED else None)
        elif status == Unfinished.ROLLED_BACK:
            self.events.emit("run_rolled_back", run_id=claim.run_id, workflow=claim.workflow,
                             status=RunState.PENDING, error=outcome.detail)
        elif status == Unfinished.SUSPENDED:
            self.events.emit("run_suspended", run_id=claim.run_id, workflow=claim.workflow, status=outcome.detail)
        else:  # Unfinished.ABANDONED: another worker resumes it
            self.events.emit("run_abandoned", run_id=claim.run_id, workflow=claim.workflow, status=outcome.detail)

    async def _crashed(self, claim: store.Claim, exc: Exception) -> None:
        """An executor crash counts as a recovery: past the maximum the run is
        dead-lettered with the crash as its reason, else retried after its lease."""
        recoveries = claim.recoveries + 1
        if recoveries > self.app.max_recoveries:
            await self._dead_letter(claim, recoveries, exc)
            return
        log.error("run %s crashed the executor (recovery %d of at most %d); it will be retried after its lease",
                  claim.run_id, recoveries, self.app.max_recoveries, exc_info=exc)
        try:
            await self.db(store.release_crashed, claim.run_id, claim.fence)
        except Exception:  # the lease expires instead, and the next claim counts the recovery
            log.exception("could not record the crash of run %s", claim.run_id)

    async def _dead_letter(self, claim: store.Claim, recoveries: int, crash: Exception | None = None) -> None:
        """Give up on a run that keeps killing or crashing its workers: it ends with the
        reason and without compensations (they might crash the same way); an operator
        retries it once the cause is fixed."""
        reason = RunDeadLettered(claim.run_id, recoveries, self.app.max_recoveries, crash)
        reason.__cause__ = crash  # its traceback goes into the recorded error
        try:
            ended = await self.db(store.dead_letter, claim.run_id, claim.fence, recoveries, describe_error(reason),
                                  self.clock.time())
        except Exception:  # held until the lease expires; the next claim tries again
            log.exception("could not dead-letter run %s", claim.run_id)
            return
        if ended:
            self.events.emit("run_dead_lettered", run_id=claim.run_id, workflow=claim.workflow,
                             status=RunState.DEAD_LETTERED, attempt=recoveries, error=str(reason))
            self.app.finished(claim.run_id)

    async def _announce(self) -> None:
        """Tell operators (``chainflow show``/``runs``) which workflows this worker
        serves, valid for one lease."""
        await self.db(store.announce_worker, self.id, self.app.registry.names(), self.clock.time(), self.lease)

    async def _keep_announcing(self) -> None:
        # a third of the lease, like a heartbeat, but on its own: independent of how
        # many runs are held, and never on the claim path
        while True:
            await asyncio.sleep(max(0.05, self.lease / 3))
            try:
                await self._announce()
            except Exception as exc:
                self._announce_failures.failed(exc, "failed; will retry")
                continue
            self._announce_failures.recovered()

    def _beat(self) -> None:
        """Renew the leases of the runs executing, every third of a lease.

        A thread with a connection of its own: a step or a local commit blocking the
        event loop, or a claim holding the worker's database threads, must not starve
        the renewals.  Each renewal moves the leases' deadlines (``Lease``) from the
        moment it was sent; what it finds (runs lost, cancels) the loop acts on."""
        conn: sa.Connection | None = None
        try:
            while not self._beat_stop.wait(max(0.05, self.lease / 3)):
                held = self._held()
                if not held:
                    continue
                sent = time.monotonic()
                try:
                    if conn is None:
                        conn = self.app.database.engine.connect()
                    with conn.begin():
                        alive = store.heartbeat(conn, self.id, {rid: ex.claim.fence for rid, ex in held.items()},
                                                self.clock.time(), self.lease)
                except Exception as exc:
                    self._beat_failures.failed(exc, "failed; will retry")
                    _discard(conn)
                    conn = None
                    continue
                self._beat_failures.recovered()
                self._renewed(held, alive, sent)
        finally:
            _discard(conn)

    def _held(self) -> dict[str, Execution]:
        """The executions of the moment, read from the heartbeat thread while the loop
        may add or remove one (a copy fails then: take it again)."""
        while True:
            try:
                return dict(self.executions)
            except RuntimeError:
                continue

    def _renewed(self, held: dict[str, Execution], alive: dict[str, bool], sent: float) -> None:
        """Apply a renewal's answer: leases move at once (from any thread); the stop of a
        lost or cancelled run is the loop's to make."""
        for rid, ex in held.items():
            if rid in alive:
                ex.lease.renewed(sent)
            else:
                ex.lease.revoke()
        loop = self.loop
        if loop is not None:
            try:
                call_on(loop, self._react, held, alive)
            except RuntimeError:
                pass  # the loop has closed: nothing left to stop

    def _react(self, held: dict[str, Execution], alive: dict[str, bool]) -> None:
        for rid, ex in held.items():
            if self.executions.get(rid) is not ex:
                continue  # ended meanwhile
            if rid not in alive:
                ex.request_stop(StopReason.LEASE_LOST)
            elif alive[rid]:
                ex.request_stop(StopReason.CANCEL)

    async def _check(self, lease: Lease) -> bool:
        """A lease's deadline passed: ask the database whether the run is still ours
        (same owner, same fence) and renew it if so.  A database that cannot answer
        proves nothing: the run is given up like a lost one."""
        ex = self.executions.get(lease.run_id)
        if ex is None or ex.lease is not lease:
            return False
        sent = time.monotonic()
        try:
            alive = await self.db(store.heartbeat, self.id, {lease.run_id: lease.fence}, self.clock.time(),
                                  self.lease)
        except Exception:
            log.exception("run %s: its lease lapsed and the database cannot confirm it; giving the run up",
                          lease.run_id)
            alive = {}
        if lease.run_id not in alive:
            log.warning("run %s: lease lapsed and lost (the worker or its database stalled); not continuing",
                        lease.run_id)
        self._renewed({lease.run_id: ex}, alive, sent)
        return lease.run_id in alive


def _discard(conn: sa.Connection | None) -> None:
    """Close a connection that may be broken (its errors no longer matter)."""
    if conn is not None:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - a broken connection's own close may fail too
            log.debug("closing the heartbeat connection failed", exc_info=True)


def call_on(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)`` on ``loop`` from any thread: from the loop itself at once (``fn``
    must not block), from elsewhere through ``call_soon_threadsafe``, whose self-pipe
    write and wake-up a caller on the loop need not pay."""
    try:
        here = asyncio.get_running_loop() is loop
    except RuntimeError:
        here = False
    if here:
        fn(*args)
    else:
        loop.call_soon_threadsafe(fn, *args)
