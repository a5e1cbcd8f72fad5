"""One execution of one claimed run: replay, drive until done or parked, record.

The executor is the only place that decides a run's fate (completed, failed,
cancelled, suspended); the context only records steps.  Keeping the decision here is
what makes a cancel, a workflow timeout and a lost lease behave the same whichever
operation the run happened to be in.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa

from ..chain import reorg
from ..chain.submission import Submitter
from ..clock import Clock
from ..errors import (
    ConfigurationError,
    LeaseLostError,
    NonDeterminismError,
    PayloadError,
    RunCancelled,
    WorkflowTimeout,
    describe_error,
)
from ..events import Events
from ..lease import Lease
from ..retry import Retry
from ..states import EntryState, RunState
from ..storage import codec, store
from ..threads import ThreadPool
from . import eager
from .committer import Committer
from .context import Context
from .flag import Flag
from .overrides import Overrides
from .registry import Registry, WorkflowDef
from .scope import _BRANCH, Scope, StopReason, contained

log = logging.getLogger("chainflow.executor")
T = TypeVar("T")

# quiescence: once no operation is in flight and something is parked, let the event
# loop spin this many times without any new operation before unwinding the run
_SETTLE_SPINS = 8
# a stop that unwinds the run at once, whatever it is doing (a shutdown: once its step
# threads are done, ``_join_threads``)
_UNWINDING = (StopReason.CANCEL, StopReason.TIMEOUT, StopReason.LEASE_LOST, StopReason.FATAL, StopReason.SHUTDOWN)
# the stops that interrupt compensations too, and what each overrides then: a lost lease
# must stop without writing, a shutdown hands the run back
_OVERRIDES = {
    StopReason.LEASE_LOST: (None, StopReason.SUSPEND, StopReason.FAILED, StopReason.SHUTDOWN),
    StopReason.SHUTDOWN: (None, StopReason.SUSPEND, StopReason.FAILED),
}


class Unfinished(StrEnum):
    """How an execution ends that leaves its run unfinished (one that finishes it
    ends with the run's final ``RunState``)."""

    SUSPENDED = "suspended"  # parked: the detail is the run's new state (sleeping or waiting)
    ABANDONED = "abandoned"  # the lease was lost, or the worker stopped: another worker resumes the run
    ROLLED_BACK = "rolled_back"  # a reorg's rollback was applied: the run is pending again


@dataclass(frozen=True)  # one shared instance stands for every lost lease
class Outcome:
    status: RunState | Unfinished
    detail: str = ""
    # the run's row as the final write left it, and its compensations when known
    # without a query: lets an awaiting client of this process skip a status read
    row: Any = None
    compensations: dict[str, EntryState] | None = None


_ABANDONED = Outcome(Unfinished.ABANDONED, "lease lost")
_RELEASED = Outcome(Unfinished.ABANDONED, "released")  # handed back by a stopping worker


class ExecutionHost(Protocol):
    """What an execution uses of the worker running it."""

    id: str  # the worker's, which holds the lease
    clock: Clock
    inline_wait: float
    committer: Committer
    step_pool: ThreadPool
    default_retry: Retry
    submitter: Submitter | None
    registry: Registry  # the workflows a ``ctx.child`` may start

    def notify(self) -> None: ...

    async def db(self, fn: Callable[..., T], *args: Any) -> T: ...
    events: Events


class Execution:
    def __init__(self, worker: ExecutionHost, claim: store.Claim, wf: WorkflowDef, history: store.History,
                 lease: Lease) -> None:
        self.worker = worker
        self.claim = claim
        self.lease = lease
        self.history = history
        self.wf = wf
        self._fn: Callable[..., Any] = wf.fn  # a fork may swap it (``runtime.overrides``)
        self.ctx: Scope | None = None
        self._stop = Flag()
        self._halt = Flag()  # only a lost lease or a shutdown stops compensations
        self._lost = Flag()
        self._parked: list[tuple[float | None, str | None]] = []
        self._reason: StopReason | None = None
        self._entries: list[store.Entry] = []
        # a failed run's error while its compensations run: kept with the run if they
        # park (``store.suspend_run``), and what a resuming execution ends it with
        self._failure: str | None = claim.failure

    def request_stop(self, reason: StopReason) -> None:
        """Called by the heartbeat (cancel, lost lease) and the worker (shutdown); the
        driver reacts."""
        self._reason = self._reason or reason
        ctx = self.ctx
        # once compensating, a cancel or timeout has nothing left to stop: the
        # compensations are what it asks for; only losing the lease or a shutdown interrupts them
        if ctx is not None and (ctx.stop_reason in (None, StopReason.SUSPEND) and not ctx.compensating
                                or ctx.stop_reason in _OVERRIDES.get(reason, ())):
            ctx.stop_reason = reason
        self._stop.set()
        if reason in _OVERRIDES:
            self._halt.set()
        if reason == StopReason.LEASE_LOST:
            self._lost.set()

    @property
    def threads(self) -> int:
        """How many of the run's step calls run in threads now (``Scope.threads``)."""
        return 0 if self.ctx is None else self.ctx.threads

    async def run(self) -> Outcome:
        w, claim = self.worker, self.claim
        entries, tries = self.history
        steps: dict[str, Callable[..., Any]] | None = None
        swap_failed: ConfigurationError | None = None
        if claim.overrides is not None:  # a fork with swapped code: imported here, in this worker
            try:
                overrides = Overrides.from_json(claim.overrides)
                steps = overrides.step_functions() or None
                self._fn = overrides.workflow_function() or self.wf.fn
            except ConfigurationError as exc:
                swap_failed = exc
        ctx = self.ctx = Scope(
            run_id=claim.run_id, workflow=claim.workflow, fence=claim.fence, entries=entries, tries=tries,
            committer=w.committer, clock=w.clock, step_pool=w.step_pool, default_retry=w.default_retry,
            submitter=w.submitter, lease=self.lease, events=w.events, step_overrides=steps, registry=w.registry,
            notify=w.notify,
        )
        if swap_failed is not None:
            return await self._finish(RunState.FAILED, None, describe_error(swap_failed))
        self._entries = entries
        if self._reason is not None:
            ctx.stop_reason = self._reason
        elif self._failure is not None:  # it failed: its replay only rebuilds the compensations
            ctx.stop_reason = StopReason.FAILED
        elif claim.rollback is not None:
            ctx.stop_reason = StopReason.ROLLBACK
        elif claim.cancel_requested:
            ctx.stop_reason = StopReason.CANCEL
        elif claim.deadline is not None and w.clock.time() >= claim.deadline:
            ctx.stop_reason = StopReason.TIMEOUT
        try:
            arg = self.wf.decode_input(codec.loads(claim.input))
        except Exception as exc:  # input stored by an older version of the workflow
            return await self._finish(RunState.FAILED, None, describe_error(exc))
        main = eager.start(self._main(ctx, arg))
        ctx.tasks.add(main)
        return await self._drive(ctx, main)

    async def _main(self, ctx: Scope, arg: Any) -> Any:
        _BRANCH.set("")
        return await contained(self._fn(Context(ctx), arg), f"the code of workflow {self.wf.name!r}")

    async def _drive(self, ctx: Scope, main: asyncio.Future[Any]) -> Outcome:
        await self._pump(ctx, main, self._stop, watch_deadline=True)
        return await self._conclude(ctx, main)

    async def _pump(self, ctx: Scope, main: asyncio.Future[Any], stop: Flag, *, watch_deadline: bool) -> None:
        """Run ``main`` until done, stopped (``stop``) or every branch is parked (suspend)."""
        clock = self.worker.clock
        stop_wait = stop.future()
        try:
            while not main.done():
                if ctx.stop_reason in _UNWINDING and stop.is_set():
                    await self._unwind(ctx)
                    break
                changed = ctx.changed.future()
                timeout: float | None = None
                if ctx.active == 0 and ctx.parks:
                    timeout = 0.0
                deadline = self.claim.deadline if watch_deadline else None
                if deadline is not None:
                    remaining = max(0.0, deadline - clock.time())
                    timeout = remaining if timeout is None else min(timeout, remaining)
                await asyncio.wait({main, changed, stop_wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                ctx.changed.clear()
                if deadline is not None and clock.time() >= deadline and not main.done():
                    self.request_stop(StopReason.TIMEOUT)
                    continue
                if not main.done() and ctx.active == 0 and ctx.parks and await self._settled(ctx):
                    if not await self._wait_inline(ctx, stop):
                        ctx.stop_reason = StopReason.SUSPEND
                        self._parked = [(p.wake_at, p.signal) for p in ctx.parks]
                        await self._unwind(ctx)
                        break
        finally:
            stop_wait.cancel()

    async def _settled(self, ctx: Scope) -> bool:
        mark = ctx.generation
        for _ in range(_SETTLE_SPINS):
            await asyncio.sleep(0)
            if ctx.generation != mark or ctx.active or not ctx.parks:
                return False
        return True

    async def _wait_inline(self, ctx: Scope, stop_event: Flag) -> bool:
        """Short timers are waited in-process; returns False when the run should park."""
        clock, limit = self.worker.clock, self.worker.inline_wait
        if any(p.wake_at is None or p.signal for p in ctx.parks):
            return False
        earliest = min(p.wake_at for p in ctx.parks if p.wake_at is not None)
        delay = earliest - clock.time()
        if delay > limit:
            return False
        if delay > 0:
            try:
                await ctx.settle()  # a run that only waits has no reason to keep a step row deferred
            except LeaseLostError:
                self.request_stop(StopReason.LEASE_LOST)
                return True  # the driver loop unwinds the run
            stop = stop_event.future()
            await asyncio.wait({stop, asyncio.ensure_future(clock.sleep(delay))}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if stop_event.is_set():
                return True  # the driver loop handles the stop
        now = clock.time()
        for park in list(ctx.parks):
            if park.wake_at is not None and park.wake_at <= now and not park.future.done():
                park.future.set_result(None)
        return True

    async def _unwind(self, ctx: Scope) -> None:
        if ctx.stop_reason == StopReason.SHUTDOWN:
            await self._join_threads(ctx)
        for task in list(ctx.tasks):
            task.cancel()
        await asyncio.gather(*ctx.tasks, return_exceptions=True)

    async def _join_threads(self, ctx: Scope) -> None:
        """Let the run's steps running in threads finish before it is cut off: nothing can
        stop a thread, so handing the run back meanwhile would let another worker run
        the step again beside it, and cutting the step off would throw away what it did.
        Each is journaled as it returns; new work is refused meanwhile (``SHUTDOWN``),
        async work goes on until the last thread is done.  A lost lease ends the wait
        (so does the worker's, ``Worker.close``: it then leaves the run leased)."""
        lost = self._lost.future()
        try:
            while ctx.threads and ctx.stop_reason == StopReason.SHUTDOWN:
                changed = ctx.changed.future()
                await asyncio.wait({changed, lost}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                ctx.changed.clear()
        finally:
            lost.cancel()

    async def _hand_back(self, ctx: Scope) -> Outcome:
        """The worker is stopping: commit what the run did (the steps its threads
        finished, a value recorded since) and release the run in one fenced write, so
        another worker resumes it at once without repeating any of it."""
        await self._unwind(ctx)  # the workflow may have ended on its own, a branch still in a thread
        if self._lost.is_set() or ctx.stop_reason == StopReason.LEASE_LOST:
            return _ABANDONED
        run_id, owner, now = self.claim.run_id, self.worker.id, self.worker.clock.time()
        try:
            await ctx.commit(lambda conn: store.release_runs(conn, [run_id], owner, now))
        except LeaseLostError:
            return _ABANDONED
        return _RELEASED

    async def _conclude(self, ctx: Scope, main: asyncio.Future[Any]) -> Outcome:
        reason = ctx.stop_reason
        # retrieved now: paths below that ignore it must not log "never retrieved"
        failed = main.exception() if main.done() and not main.cancelled() else None
        if reason == StopReason.LEASE_LOST:
            return _ABANDONED
        if reason == StopReason.SHUTDOWN:
            return await self._hand_back(ctx)
        if reason == StopReason.SUSPEND:
            if not main.done() or main.cancelled():
                return await self._suspend(ctx)
            # the workflow ended (a branch failed beside parked ones) while the run was
            # being parked: parking it would leave the failure to whatever wakes it
            # next, perhaps nothing; it is concluded now instead
            ctx.stop_reason = reason = None
        if reason == StopReason.ROLLBACK:
            if ctx.tasks - {main}:
                await self._unwind(ctx)
            return await self._roll_back(ctx)
        # let sibling branches settle before deciding (a failed branch leaves others running)
        if ctx.tasks - {main}:
            await self._unwind(ctx)
        if reason is None and main.done() and not main.cancelled():
            ctx.unasked()  # the code ended by itself: before operations its journal holds?
        if reason == StopReason.FATAL or isinstance(ctx.fatal, NonDeterminismError):
            assert ctx.fatal is not None
            log.error("%s", ctx.fatal)
            return await self._finish(RunState.FAILED, None, describe_error(ctx.fatal))
        if reason == StopReason.FAILED and self._failure is not None:
            # whatever the replay raised (its failure again, or the refusal of new work
            # a branch that had been parked met first), the run's failure is the one kept
            return await self._compensate_and_finish(ctx, RunState.FAILED, self._failure)
        if reason in (StopReason.CANCEL, StopReason.TIMEOUT) and failed is not None and \
                not isinstance(failed, (RunCancelled, LeaseLostError)):
            # it had failed on its own (replayed: a failed step's row) before the cancel or
            # the deadline could stop it, e.g. while its compensations were parked
            return await self._compensate_and_finish(ctx, RunState.FAILED, failed)
        if reason == StopReason.CANCEL:
            return await self._compensate_and_finish(ctx, RunState.CANCELLED, RunCancelled(self.claim.run_id))
        if reason == StopReason.TIMEOUT:
            return await self._compensate_and_finish(ctx, RunState.FAILED, WorkflowTimeout(self.claim.run_id))
        exc = failed if not main.cancelled() else RunCancelled(self.claim.run_id)
        if isinstance(exc, LeaseLostError):
            return _ABANDONED
        if exc is None:
            try:
                text = codec.dumps(main.result(), what=f"result of workflow {self.wf.name!r}")
            except PayloadError as perr:
                return await self._compensate_and_finish(ctx, RunState.FAILED, perr)
            return await self._finish(RunState.COMPLETED, text, None)
        return await self._compensate_and_finish(ctx, RunState.FAILED, exc)

    async def _roll_back(self, ctx: Scope) -> Outcome:
        """Compensate what depended on an invalidated step, then reopen the run there."""
        assert self.claim.rollback is not None
        request = reorg.parse(self.claim.rollback)
        ids = set(store.rollback_targets(request))
        doomed = reorg.dependents(self._entries, [e for e in self._entries if e.id in ids], ctx.branch_order)
        try:
            # children started after the broken step are cancelled (their compensations
            # run as on any cancel), before their slots are superseded: a crash between
            # the two repeats an idempotent cancel
            await self._cancel_children([codec.loads(e.output) for e in doomed
                                         if e.kind == "child" and e.status == EntryState.PENDING])
            done = await self._compensations(ctx, only={e.id for e in doomed if e.id not in ids})
            if isinstance(done, Outcome):
                return done
            run_id, now, reason = self.claim.run_id, self.worker.clock.time(), request["reason"]
            await ctx.commit(lambda conn: store.supersede(conn, run_id, doomed, reason, now))
        except LeaseLostError:
            return _ABANDONED
        return Outcome(Unfinished.ROLLED_BACK, request["reason"])

    async def _compensate_and_finish(self, ctx: Scope, status: RunState, error: BaseException | str) -> Outcome:
        """Compensate, then finish ``status`` with ``error`` (or its ``describe_error``
        text, kept from an earlier execution)."""
        described = error if isinstance(error, str) else describe_error(error)
        if status == RunState.FAILED:
            self._failure = described
        failures = await self._compensations(ctx)
        if isinstance(failures, Outcome):
            return failures
        if ctx.compensations:
            self.worker.events.emit("run_compensated", run_id=self.claim.run_id, workflow=self.wf.name,
                                    status=status, error=f"{len(failures)} compensation(s) failed" if failures
                                    else None)
        info = json.loads(described)
        if failures:
            info["compensation_failures"] = failures
        return await self._finish(status, None, json.dumps(info))

    async def _compensations(self, ctx: Scope, only: set[int] | None = None) -> list[str] | Outcome:
        """Run the compensations as a driven task, like the workflow itself: a retry
        backoff (or any other park) inside one is waited inline or suspends the run,
        instead of awaiting a park nobody would ever resolve."""
        if self._halt.is_set():
            return await self._hand_back(ctx)
        task = asyncio.get_running_loop().create_task(ctx.run_compensations(Context, only))
        ctx.tasks.add(task)
        task.add_done_callback(ctx.tasks.discard)
        await self._pump(ctx, task, self._halt, watch_deadline=False)
        if ctx.stop_reason == StopReason.SUSPEND:
            return await self._suspend(ctx, bounded_by_deadline=False)
        if ctx.stop_reason in _OVERRIDES or task.cancelled():
            if task.done() and not task.cancelled():
                task.exception()  # its LeaseLostError (or refusal) is this stop: retrieved, never logged as lost
            return await self._hand_back(ctx)
        exc = task.exception()
        if isinstance(exc, LeaseLostError):
            return _ABANDONED
        if exc is not None:
            raise exc
        return task.result()

    async def _cancel_children(self, child_ids: list[str]) -> None:
        """Cancel these children of the run (and their descendants) that are unfinished,
        in a transaction of their own: locking them in the run's fenced commit would take
        the run before its children, against the lock order (``storage.store``)."""
        if child_ids:
            await self._db(store.cancel_runs, child_ids, self.worker.clock.time())

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self.worker.db(fn, *args)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            raise LeaseLostError(self.claim.run_id) from exc  # as a fenced commit's failure would

    async def _finish(self, status: RunState, output: str | None, error: str | None) -> Outcome:
        """The run's final write, in the transaction that makes the run's deferred step
        rows durable (``scope``).  Children it started and did not await are cancelled
        first (a run's children do not outlive it), after those rows; a child's own
        finish wakes its parent in the same transaction (``store.finish_child``)."""
        run_id, now = self.claim.run_id, self.worker.clock.time()
        ctx = self.ctx
        assert ctx is not None
        finish = store.RunFinish(run_id, status, output, error, now)
        try:
            if ctx.started_children or any(e.kind == "child" for e in self._entries):
                await ctx.settle()
                await self._db(lambda conn: store.cancel_runs(conn, store.unfinished_children(conn, run_id), now))
            if self.claim.parent_slot is None or self.claim.parent_id is None:
                row, = await ctx.commit(finish)
            else:
                await ctx.flush()
                row = await self._db(store.finish_child, finish, self.claim.fence, self.claim.parent_id)
                if row is None:
                    return _ABANDONED
        except LeaseLostError:
            return _ABANDONED
        # compensations are known without a query only when none ever ran
        comps: dict[str, EntryState] | None = {} if status == RunState.COMPLETED and not any(
            e.kind == "compensation" for e in self._entries) else None
        return Outcome(status, error or "", row, comps)

    async def _suspend(self, ctx: Scope, bounded_by_deadline: bool = True) -> Outcome:
        # a park with no wake time (waiting only for an event) does not bound the wake-up
        wake_at = min((w for w, _ in self._parked if w is not None), default=None)
        signals = sorted({s for _, s in self._parked if s})
        if self.claim.deadline is not None and bounded_by_deadline:
            wake_at = self.claim.deadline if wake_at is None else min(wake_at, self.claim.deadline)
        status = RunState.WAITING if signals or wake_at is None else RunState.SLEEPING
        run_id, now = self.claim.run_id, self.worker.clock.time()
        try:
            await ctx.commit(*store.suspension(self.worker.committer.dialect, run_id, status, wake_at, signals, now,
                                               compensating=ctx.compensating,
                                               failure=self._failure if ctx.compensating else None))
        except LeaseLostError:
            return _ABANDONED
        return Outcome(Unfinished.SUSPENDED, status)
