"""The worker: claims due runs under a lease, executes them, keeps leases alive.

A worker holds no state that matters: everything is in the database, so a worker can
be SIGKILLed at any instant and another one (on any machine) resumes its runs once the
lease expires.  Fencing makes the dead worker's late writes, should it come back from
a long GC pause, fail instead of corrupting the journal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from . import metrics, store
from .clock import to_seconds
from .committer import Committer
from .connector import is_local
from .context import CANCEL, LEASE_LOST
from .executor import Execution, Outcome
from .threads import ThreadPool

if TYPE_CHECKING:
    from .app import Chainflow

log = logging.getLogger("chainflow.worker")
T = TypeVar("T")


class Worker:
    _RESERVE_PATIENCE = 0.05  # s a start waits for a claim in flight to hand back slots

    def __init__(
        self,
        app: Chainflow,
        *,
        concurrency: int = 32,
        lease: float | None = None,
        poll_interval: float = 0.2,
        inline_wait: float = 1.0,
        worker_id: str | None = None,
        track: bool = True,
        commit_in_thread: bool | None = None,
    ) -> None:
        if not isinstance(concurrency, int) or isinstance(concurrency, bool):
            raise TypeError(f"Worker concurrency must be an int, got {concurrency!r}")
        if concurrency < 1:
            raise ValueError(f"Worker concurrency must be >= 1, got {concurrency!r}")
        self.app = app
        self.clock = app.clock
        self.concurrency = concurrency
        self.lease = to_seconds(app.lease_seconds if lease is None else lease, "Worker lease", positive=True)
        self.poll_interval = to_seconds(poll_interval, "Worker poll_interval", positive=True)
        self.inline_wait = to_seconds(inline_wait, "Worker inline_wait")
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # None: commit on the loop for a database on this machine, in a thread otherwise
        far = not is_local(app.engine.url) if commit_in_thread is None else commit_in_thread
        self.committer = Committer(app.engine, running=lambda: len(self.executions), in_thread=far)
        self.step_pool = ThreadPool(max(4, concurrency), "chainflow-step")
        self._db_pool = ThreadPool(2, "chainflow-db")
        self.executions: dict[str, Execution] = {}
        # how recent executions ended (bounded: a long-lived worker must not grow)
        self.outcomes: OrderedDict[str, Outcome] = OrderedDict()
        self._tasks: set[asyncio.Task[Outcome | None]] = set()
        self._wake = asyncio.Event()
        self._heartbeat: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop the worker runs on
        self._slots = threading.Condition()
        self._reserved = 0
        self._claiming = 0  # of ``_reserved``: slots held by a claim query in flight
        self._loop_thread: int | None = None
        self._backlog = False  # the last claim filled every free slot: more may be due
        self.track = track  # run a (leader-elected) head follower per configured chain
        self._trackers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in one transaction off the event loop."""

        def call() -> T:
            with self.app.engine.begin() as conn:
                return fn(conn, *args)

        return await self._db_pool.run(call)

    def notify(self) -> None:
        """Something became due (a start or signal in this process): poll now.

        Thread-safe: a sync web view in another thread may be the caller."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        # attached as soon as it has a loop: a start from now on is adopted or notifies
        # this worker, never falls between its attaching and its first claim
        self.app.attach(self)
        await self._db_pool.run(self.app.ensure_schema)
        self._heartbeat = asyncio.create_task(self._beat(), name="chainflow-heartbeat")
        if self.track:
            from .tracker import Tracker

            for adapter in self.app.chains.values():
                tracker = Tracker(self.app, adapter, self.id, self.app.tracker_config)
                self._trackers.append(asyncio.create_task(tracker.run(self._stopping), name=f"tracker-{adapter.name}"))

    async def close(self) -> None:
        """Stop executing and hand held runs back at once (no lease wait for others)."""
        self.app.detach(self)
        self._stopping.set()
        await asyncio.gather(*self._trackers, return_exceptions=True)
        if self._heartbeat:
            self._heartbeat.cancel()
        # taken before stopping: each execution leaves ``executions`` as it unwinds
        held = list(self.executions)
        for ex in list(self.executions.values()):
            ex.request_stop(LEASE_LOST)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._heartbeat:
            await asyncio.gather(self._heartbeat, return_exceptions=True)
        await self.committer.close()
        if held:
            await self.db(self._release, held)
        for adapter in self.app.chains.values():
            await adapter.aclose()  # HTTP sessions are bound to this event loop
        self.step_pool.shutdown(wait=False)
        self._db_pool.shutdown(wait=True)

    def _release(self, conn: sa.Connection, held: list[str]) -> None:
        from .schema import runs

        conn.execute(
            runs.update()
            .where(runs.c.id.in_(held), runs.c.lease_owner == self.id)
            .values(lease_owner=None, lease_expires=None, status="pending", ready_at=self.clock.time())
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Work until ``stop`` is set (or forever)."""
        stop = stop or asyncio.Event()
        await self.start()
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                try:
                    claimed = await self.poll()
                except Exception:  # database unreachable for a moment: keep the worker alive
                    log.exception("claiming runs failed; retrying in %.1fs", self.poll_interval)
                    claimed = 0
                if claimed and len(self.executions) < self.concurrency:
                    continue
                self._wake.clear()
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
        try:
            claims = await self.db(store.claim_with_history, self.id, free, self.clock.time(), self.lease)
        finally:
            with self._slots:  # release and occupy in one step, as seen by ``reserve``
                self._reserved -= free
                self._claiming = 0
                for claim, history in claims:
                    self._spawn(claim, history)
                self._backlog = len(claims) == free
                self._slots.notify_all()
        return len(claims)

    async def drain(self) -> None:
        """Run everything due now to completion or suspension (tests, benchmarks)."""
        while await self.poll() or self._tasks or self._reserved:
            if self._tasks:
                await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(0)  # adoptions scheduled from another thread land first

    def reserve(self, workflow: str) -> bool:
        """Take a slot for a run this process is about to create (start fast path).

        A claim query in flight holds the free slots until it returns; a start from
        another thread waits for it (a few ms) rather than leaving its run to the next
        claim, which would cost a claim round trip per run."""
        with self._slots:
            if self.loop is None or self._stopping.is_set() or workflow not in self.app.registry:
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

    def adopt(self, claim: store.Claim | None) -> None:
        """Run a run born claimed by this worker; None gives back an unused reservation."""
        def take() -> None:
            with self._slots:
                self._reserved -= 1
                if claim is not None:
                    self._spawn(claim, ([], {}))

        assert self.loop is not None
        call_on(self.loop, take)

    def _spawn(self, claim: store.Claim, history: store.History) -> None:
        wf = self.app.registry.get(claim.workflow) if claim.workflow in self.app.registry else None
        if wf is None:
            log.error("run %s needs workflow %r, not registered in this worker", claim.run_id, claim.workflow)
            return
        ex = Execution(self, claim, wf, history)
        self.executions[claim.run_id] = ex
        task = asyncio.create_task(self._execute(ex), name=f"chainflow-run-{claim.run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _execute(self, ex: Execution) -> Outcome | None:
        try:
            outcome = await ex.run()
            self.outcomes[ex.claim.run_id] = outcome
            if len(self.outcomes) > 10_000:
                self.outcomes.popitem(last=False)
            if outcome.status in store.TERMINAL:
                metrics.inc("chainflow_runs_finished_total", status=outcome.status)
                if outcome.row is not None and outcome.row.status not in store.TERMINAL:
                    return outcome  # reopened by a reorg as it finished: not over yet
                self.app.finished(ex.claim.run_id, outcome.row, outcome.compensations)
            return outcome
        except Exception:
            log.exception("run %s crashed the executor; it will be retried after its lease", ex.claim.run_id)
            return None
        finally:
            # a freed slot is worth an immediate poll only if the last claim left work
            # queued; otherwise the poll interval and local notifications suffice, and a
            # needless claim in flight would push a local start off its fast path
            if self._backlog:
                self._wake.set()
            self.executions.pop(ex.claim.run_id, None)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.lease / 3))
            held = {rid: ex.claim.fence for rid, ex in self.executions.items()}
            if not held:
                continue
            try:
                alive = await self.db(store.heartbeat, self.id, held, self.clock.time(), self.lease)
            except Exception:
                log.exception("heartbeat failed; will retry")
                continue
            for rid in held:
                ex = self.executions.get(rid)
                if ex is None:
                    continue
                if rid not in alive:
                    ex.request_stop(LEASE_LOST)
                elif alive[rid]:
                    ex.request_stop(CANCEL)


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
