"""The runtime side of a workflow's ``ctx``: what ``ctx.step``, ``ctx.sleep``,
``ctx.wait_for``... do underneath the public ``Context``.

Every operation takes a *slot*: (branch, position in branch, name#occurrence).  The
position is assigned synchronously when the operation is called, so on replay the same
code asks for the same slots in the same order; when it does not, the run stops with
``NonDeterminismError`` instead of silently running a step twice.

Operations that must wait (sleep, retry backoff, signal, confirmations) *park*: they
await a future the executor controls.  When every branch of the run is parked, the
executor unwinds the coroutine and records when to wake it, so a parked run costs a
database row, not a coroutine.

A step's journal row is durable before anything that could have an effect runs after
the step, but not necessarily the instant the step returns: when the step was the
run's only work in flight, its row waits in the run's buffer and is committed with the
run's next durable write -- the next step or compensation attempt (which commits
before it starts), a submit (before it starts), a child's creation, a sleep, a signal
wait, a suspend, an inline wait, or the run's finish (one transaction: a 5-step run
makes 6 commits, not 7).  What runs meanwhile is workflow code, deterministic and
replayed: a crash before that commit re-runs the step exactly as a crash just before
its own commit would, and a lost lease drops the row with the execution.  A step that
completes while other work of its run is in flight commits at once (as part of the
group commit), so a long-running sibling never holds another branch's result back.
``step_completed`` is announced only once the row is durable.  A value recorded by
``ctx.now/uuid/random`` (or a ``ctx.patched`` answer) waits in the same buffer, under the
same rule: committed before the next effect starts, so a step handed a recorded key
after a crash is handed the same key.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import functools
import inspect
import random as _random
import time
import uuid as _uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from ..clock import Clock, seconds, to_datetime, to_seconds
from ..events import Events
from ..errors import (
    CodeRaisedBaseException,
    LeaseLostError,
    NonDeterminismError,
    PayloadError,
    RunCancelled,
    StepError,
    StepTimeout,
    WaitTimeout,
    describe_error,
    error_parts,
    summary,
    type_name,
)
from ..chain.scope import Landed
from ..lease import Lease
from ..retry import DEFAULT_RETRY, Retry, check_policy
from ..states import EntryState, RunState
from ..storage import codec, limits, store
from ..threads import Ended, ThreadPool
from .branchorder import BranchOrder
from .committer import Committer
from .flag import Flag
from .registry import Registry

if TYPE_CHECKING:
    from ..chain.adapter import Receipt
    from ..chain.finality import Finality
    from ..chain.submission import Submitter

T = TypeVar("T")

_BRANCH: contextvars.ContextVar[str] = contextvars.ContextVar("chainflow_branch", default="")
# set while a compensation that takes a context runs (and in branches it starts): the
# compensated intent, under which its submissions' idempotency keys are namespaced
_ORIGIN: contextvars.ContextVar[str | None] = contextvars.ContextVar("chainflow_origin", default=None)
_YIELD_EVERY = 64  # steps journaled between two turns given to the rest of the event loop


class StopReason(StrEnum):
    """Why the executor is unwinding the workflow coroutine."""

    SUSPEND = "suspend"  # every branch is parked
    CANCEL = "cancel"
    TIMEOUT = "timeout"  # the workflow's own deadline
    LEASE_LOST = "lease_lost"  # another worker may own the run: stop without writing
    FATAL = "fatal"  # non-determinism
    ROLLBACK = "rollback"  # replay only, to collect compensations of invalidated steps
    FAILED = "failed"  # replay only, to finish the compensations of a failure (``Claim.failure``)
    SHUTDOWN = "shutdown"  # the worker is stopping: hand the run back once its step threads are journaled


# bound once: looked up on every step (see ``states`` on Enum attribute access)
_OK = EntryState.OK
_REFUSING = (StopReason.CANCEL, StopReason.TIMEOUT, StopReason.ROLLBACK, StopReason.FAILED,  # no new work may start
             StopReason.SHUTDOWN)


@dataclass
class BranchState:
    """Where a branch's next operation goes: its position and each name's occurrence."""

    position: int = 0
    names: Counter[str] = field(default_factory=Counter)
    children: Counter[str] = field(default_factory=Counter)

    def take(self, name: str) -> tuple[int, str]:
        """The next position in the branch and the key of ``name``'s next occurrence."""
        position = self.position
        self.position += 1
        occurrence = self.names[name]
        self.names[name] += 1
        return position, name if occurrence == 0 else f"{name}{limits.OCCURRENCE_SEP}{occurrence}"

    def opened(self, label: str) -> bool:
        """Whether this branch has opened its child branch ``label`` (``name``, ``name#n``)."""
        name, _, n = label.partition(limits.OCCURRENCE_SEP)
        return self.children[name] > (int(n) if n else 0)


def went_past(held: Iterable[tuple[str, int]], state: Callable[[str], BranchState], branch: str) -> bool:
    """Whether a journal holding operations at ``held`` (branch path, position) went past
    the point where ``branch`` now is (``state`` gives a path's ``BranchState``):
    ``ctx.patched`` answers False there.

    Past it are operations at ``branch``'s next position or later, and in a child branch
    it has not opened yet; likewise for each of its enclosing branches, where it stands
    now: a run parked inside a ``ctx.gather`` placed after the change journaled only in
    the gather's branches, which take no position in their parent.  Operations of a
    sibling opened before this point are concurrent, not past it.  An enclosing branch
    whose replay lags behind its journal (it awaits a branch still replaying) counts as
    past: the answer is then False, the old path, which the code still has."""
    frontier: dict[str, int] = {}
    path = branch
    while True:
        frontier[path] = state(path).position
        if not path:
            break
        path = path.rpartition(limits.BRANCH_SEP)[0]
    for path, position in held:
        if path in frontier:
            if position >= frontier[path]:
                return True
            continue
        parent, _, label = path.rpartition(limits.BRANCH_SEP)
        while parent not in frontier:
            parent, _, label = parent.rpartition(limits.BRANCH_SEP)
        if not state(parent).opened(label):
            return True
    return False


def _check_work(work: Any, what: str) -> None:
    """Refuse a branch's work that cannot be awaited before its task starts: awaited in
    the task, it failed there with an error naming no branch."""
    if not inspect.isawaitable(work):
        raise TypeError(f"{what} must be given an awaitable (call the async function, do not await it), "
                        f"got {work!r}")


def _discard(works: Iterable[Any]) -> None:
    """Close the coroutines among refused ``works``: never started, they would warn that
    they were never awaited."""
    for work in works:
        if inspect.iscoroutine(work):
            work.close()


def open_branch(state: Callable[[str], BranchState], tasks: set[asyncio.Future[Any]], name: str,
                work: Coroutine[Any, Any, T], order: BranchOrder | None = None) -> asyncio.Task[T]:
    """Start ``work`` as the next branch ``name`` of the calling branch (``state`` gives
    a branch path's ``BranchState``), its task kept in ``tasks`` while it runs and its
    opening noted in ``order``."""
    parent = _BRANCH.get()
    siblings = state(parent)
    n = siblings.children[name]
    label = name if n == 0 else f"{name}{limits.OCCURRENCE_SEP}{n}"
    path = f"{parent}{limits.BRANCH_SEP}{label}" if parent else label
    try:
        limits.slot_name(name, "branch")
        _check_work(work, f"branch {name!r}")
        if len(path) > limits.BRANCH_LENGTH:
            raise ValueError(f"branch path {path[:60]!r}… is {len(path)} characters long, "
                             f"the limit is {limits.BRANCH_LENGTH}")
    except (ValueError, TypeError):
        _discard([work])
        raise
    siblings.children[name] += 1
    scope = contextvars.copy_context()
    scope.run(_BRANCH.set, path)
    if order is None:
        task = asyncio.get_running_loop().create_task(contained(work, f"branch {path!r}"), context=scope)
    else:
        def awaited() -> None:
            awaiter = _BRANCH.get()
            order.awaited(awaiter, state(awaiter).position, path)

        task = _BranchTask(contained(work, f"branch {path!r}"), loop=asyncio.get_running_loop(), context=scope,
                           awaited=awaited)
        order.opened(parent, path, task)
    task.add_done_callback(lambda _: work.close())  # cancelled before it started: never awaited, not a leak
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


class _BranchTask(asyncio.Task[T]):
    """A branch's task that tells when another branch awaits it or reads its result
    (``asyncio.gather`` and ``wait_for`` read it in a callback run in the context of
    the branch that called them): from then on that branch may use the result, and a
    reorg rollback of this branch reaches it."""

    def __init__(self, work: Coroutine[Any, Any, T], *, loop: asyncio.AbstractEventLoop,
                 context: contextvars.Context, awaited: Callable[[], None]) -> None:
        super().__init__(work, loop=loop, context=context)
        self._awaited = awaited

    def __await__(self) -> Generator[Any, None, T]:
        result = yield from super().__await__()
        self._awaited()  # in the awaiting task, whose branch context is current
        return result

    __iter__ = __await__

    def result(self) -> T:
        value = super().result()
        self._awaited()
        return value


async def _outlast(thread: asyncio.Future[T], scope: Scope) -> T:
    """A sync step's outcome even when the run stops while its thread runs (a cancel, a
    failing sibling): nothing can stop the thread, and an effect it has must be
    journaled and compensated with the rest.  The caller raises the stop again once it
    is (``_cancel_pending``).  Not once the run's lease is lost (or its worker stops
    waiting for it): nothing could be journaled any more."""
    try:
        return await asyncio.shield(thread)
    except asyncio.CancelledError:
        if thread.cancelled() or scope.stop_reason == StopReason.LEASE_LOST:
            thread.cancel()
            raise
        try:
            return await thread
        except Exception:
            raise asyncio.CancelledError from None  # it failed: nothing to undo, and the stop stands


def _cancel_pending() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def own_failure(raised: BaseException, where: str) -> BaseException:
    """What ``raised`` out of a step's or workflow's code is to its run: an Exception as
    it is; a ``SystemExit``, ``KeyboardInterrupt`` or ``CancelledError`` nobody asked
    for as ``CodeRaisedBaseException`` (``errors``); anything else -- a cancel of its
    task, ``GeneratorExit`` -- is control flow, returned as it is for the caller to
    re-raise."""
    if isinstance(raised, (SystemExit, KeyboardInterrupt)) or (
            isinstance(raised, asyncio.CancelledError) and not _cancel_pending()):
        return CodeRaisedBaseException(raised, where)
    return raised


async def contained(work: Awaitable[T], where: str) -> T:
    """``await work``, its stray base exceptions made its run's failure (``own_failure``):
    for code run in a task of its own (a branch, a step under a timeout), out of which
    asyncio would re-raise ``SystemExit`` and ``KeyboardInterrupt`` to end the loop."""
    try:
        return await work
    except BaseException as raised:
        failure = own_failure(raised, where)
        if failure is raised:
            raise
        raise failure from raised


async def gather_branches(branch: Callable[[str, Coroutine[Any, Any, Any]], asyncio.Task[Any]],
                          works: tuple[Coroutine[Any, Any, Any], ...], names: list[str] | None) -> list[Any]:
    """``asyncio.gather`` of ``works``, each started by ``branch`` as its own branch
    ("0", "1", ... or ``names``); every name and work is checked before any branch starts."""
    labels = names or [str(i) for i in range(len(works))]
    try:
        if len(labels) != len(works):
            raise ValueError(f"gather got {len(works)} awaitables but {len(labels)} names")
        for label, work in zip(labels, works):
            limits.slot_name(label, "gather")
            _check_work(work, f"gather {label!r}")
    except (ValueError, TypeError):
        _discard(works)
        raise
    return list(await asyncio.gather(*(branch(n, w) for n, w in zip(labels, works))))


@dataclass
class Park:
    wake_at: float | None
    signal: str | None
    future: asyncio.Future[None]


@dataclass
class Compensation:
    order: tuple[int, int]
    slot: store.Slot
    fn: Callable[..., Any]
    value: Any
    retry: Retry
    timeout: float | None
    origin: str  # the compensated intent: namespace of the keys its submissions derive
    # an operation cut off unfinished: awaited for what to undo when compensating (None: nothing)
    settle: Callable[[], Awaitable[Landed | None]] | None = None


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def takes_context(fn: Any, what: str) -> bool:
    """Whether a compensation is the context form ``async def undo(ctx, output)``.

    Told by the number of positional parameters it *requires*: two means
    ``(ctx, output)``.  Every compensation that works today requires one (it is called
    ``fn(output)``), so none of them changes meaning; an annotation is not needed and
    not consulted (under ``from __future__ import annotations`` it is only a string)."""
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {fn!r}")
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the plain form, as always
        return False
    required = [p for p in parameters if p.kind in _POSITIONAL and p.default is inspect.Parameter.empty]
    if len(required) != 2:
        return False
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{what} takes (ctx, output) but is not an async def: a compensation that uses the "
                        f"context awaits its steps and submissions, got {fn!r}")
    return True


def check_compensation(fn: Any, what: str) -> None:
    """Refuse a bad compensation before the operation it undoes runs (``step`` and
    ``submit`` call this; registering then needs no second look).  One registered
    inside a compensation would never run (the compensations to run are chosen when
    compensating starts), so it is refused."""
    if _ORIGIN.get() is not None:
        raise ValueError(f"{what}: a compensation's own steps and submissions cannot take compensate=")
    takes_context(fn, what)


def check_step(name: str, fn: Any, retry: Retry | None) -> None:
    """Refuse, before step ``name`` takes a slot, what would fail only once it ran: a
    ``fn`` that is no callable was called as the step and retried as its failure."""
    if not callable(fn):
        raise TypeError(f"step {name!r} must be given a callable to run, got {fn!r}")
    check_policy(retry, f"retry of step {name!r}")


def submission_key(name: str, idempotency_key: str | None) -> str:
    """The idempotency key a ``ctx.submit`` uses: the given one in workflow code; inside
    a compensation, derived from the compensated intent (the given key, or the submit's
    name, namespaced under it), so the undo of one intent is one submission, ever."""
    origin = _ORIGIN.get()
    what = f"idempotency_key of submit {name!r}"
    if origin is None:
        if idempotency_key is None:
            raise TypeError(f"submit {name!r} needs an idempotency_key (only the submissions of a "
                            "compensation derive theirs)")
        return limits.idempotency_key(idempotency_key, what)
    return limits.compensation_key(origin, name if idempotency_key is None else idempotency_key, what)


class Scope:
    """One execution's run-side state and operations: slots and replay, the fenced
    commit, parks, attempts, compensations, the lease proof.

    Workflow code sees it only through ``Context`` (the public facade), the executor
    drives it, and the chain layer's submission protocol uses it as its
    ``RunScope``."""

    def __init__(
        self,
        *,
        run_id: str,
        workflow: str,
        fence: int,
        entries: list[store.Entry],
        tries: dict[tuple[str, str], list[store.AttemptRow]],
        committer: Committer,
        clock: Clock,
        step_pool: ThreadPool,
        lease: Lease,
        events: Events,
        default_retry: Retry = DEFAULT_RETRY,
        submitter: Submitter | None = None,
        step_overrides: dict[str, Callable[..., Any]] | None = None,
        registry: Registry | None = None,
        notify: Callable[[], None] | None = None,
    ) -> None:
        self.run_id = run_id
        self.lease = lease
        self.events = events
        self.workflow = workflow
        self.fence = fence
        self._by_pos = {(e.branch, e.position): e for e in entries if e.position >= 0}
        self._by_key = {(e.branch, e.key): e for e in entries}
        self._tries = tries
        self._committer = committer
        self.clock = clock
        self._pool = step_pool
        self.default_retry = default_retry
        self._submitter = submitter
        # a fork's swapped step code, by step name (``runtime.overrides``); None for most runs
        self._overrides = step_overrides
        self._registry = registry  # the workflows a ``ctx.child`` may start
        self._notify = notify  # a child was created: the worker may claim it now
        self.started_children = False  # this execution started a child run
        self._branches: dict[str, BranchState] = {}
        self.branch_order = BranchOrder()  # what a reorg rollback may undo (``runtime.branchorder``)
        self._patches: dict[str, bool] = {}  # ``patched`` answers decided in this execution
        self._buffer: list[store.Op] = []  # rows an effect must commit first (``settle``)
        # the step rows deferred into ``_buffer`` as ``announce``'s (label, attempt,
        # started, finished): announced once they are durable
        self._deferred: list[tuple[str, int, float, float]] = []
        self._carrying: set[asyncio.Future[None]] = set()  # commits in flight with buffered rows
        self._fresh = 0
        self._journaled = 0  # steps this execution journaled
        self.compensations: list[Compensation] = []
        self.tasks: set[asyncio.Future[Any]] = set()
        self.parks: list[Park] = []
        self.active = 0
        # step calls running in threads whose outcome the run awaits: nothing can stop
        # them, so a stopping worker waits for them before handing the run back
        self.threads = 0
        self.generation = 0
        self.changed = Flag()
        self.stop_reason: StopReason | None = None
        self.compensating = False  # set once compensations start; cancel/timeout no longer apply
        self.fatal: BaseException | None = None

    # --- public API ------------------------------------------------------------

    async def step(
        self,
        name: str,
        fn: Callable[..., T | Awaitable[T]],
        /,
        *args: Any,
        retry: Retry | None = None,
        timeout: float | dt.timedelta | None = None,
        compensate: Callable[..., Any] | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``fn`` once (modulo retries), journal its result, return the journaled copy."""
        limit = None if timeout is None else to_seconds(timeout, f"timeout of step {name!r}", positive=True)
        if compensate is not None:
            check_compensation(compensate, f"compensate of step {name!r}")
        check_step(name, fn, retry)
        slot = self._slot(name, "step")
        policy = retry or self.default_retry
        if slot.entry is None:
            if self._overrides is not None:
                fn = self._overrides.get(name, fn)
            undo = None if compensate is None else \
                functools.partial(self.register_compensation, slot, compensate, retry=policy, timeout=limit)
            text, value = await self._execute(slot, "step", fn, args, kwargs, policy, limit, undo)
            return value  # type: ignore[no-any-return]
        if slot.entry.status != _OK:
            etype, message = error_parts(slot.entry.error)
            raise StepError(slot.label, etype, message, slot.entry.attempts)
        value = codec.loads(slot.entry.output)
        if compensate is not None:
            self.register_compensation(slot, compensate, value, policy, limit)
        return value  # type: ignore[no-any-return]

    async def sleep(self, name: str, duration: float | dt.timedelta) -> None:
        """Durable sleep: the process may be down meanwhile; wakes on the engine's clock."""
        length = to_seconds(duration, f"duration of sleep {name!r}")
        slot = self._slot(name, "sleep")
        if slot.entry is not None:
            wake_at = float(codec.loads(slot.entry.output))
        else:
            self.refuse_new_work()
            wake_at = self.clock.time() + length
            now = self.clock.time()
            await self._commit(self.entry_op(slot, "sleep", EntryState.OK, codec.dumps(wake_at), None, 1, now, now))
        await self.park(wake_at, None)

    async def wait_for(self, name: str, timeout: float | dt.timedelta | None = None) -> Any:
        """Wait for an external signal; one sent before this point is kept and returned."""
        limit = seconds(timeout, f"timeout of wait_for {name!r}")
        limits.text(name, "wait_for signal name", limits.SIGNAL_LENGTH)
        slot = self._slot(name, "wait")
        entry = slot.entry
        if entry is not None and entry.status == EntryState.OK:
            return codec.loads(entry.output)
        if entry is not None and entry.status == EntryState.TIMEOUT:
            raise WaitTimeout(name)
        if entry is None:
            self.refuse_new_work()
            now = self.clock.time()
            deadline = None if limit is None else now + limit
            await self._commit(
                self.entry_op(slot, "wait", EntryState.PENDING, codec.dumps(deadline), None, 1, now, None))
        else:
            deadline = codec.loads(entry.output)
        run_id, branch, key = self.run_id, slot.branch, slot.key
        while True:
            self.refuse_new_work()

            def take(conn: Any) -> tuple[bool, str | None]:
                found, payload = store.consume_signal(conn, run_id, name)
                if found:
                    store.update_entry(conn, run_id, branch, key, status=EntryState.OK, output=payload,
                                       finished_at=self.clock.time())
                return found, payload

            (found, payload), = await self._commit(take)
            if found:
                return codec.loads(payload)
            now = self.clock.time()
            if deadline is not None and now >= deadline:
                await self._commit(
                    lambda conn: store.update_entry(conn, run_id, branch, key, status=EntryState.TIMEOUT,
                                                   finished_at=now)
                )
                raise WaitTimeout(name)
            await self.park(deadline, name)

    async def child(self, name: str, workflow: str, input: Any = None, *,
                    compensate: Callable[..., Any] | None = None) -> Any:
        """Start the child run ``workflow(input)`` once (the slot records its id), park
        until it is finished and return its output; a failed or cancelled child raises
        ``StepError``."""
        if compensate is not None:
            check_compensation(compensate, f"compensate of child {name!r}")
        slot = self._slot(name, "child")
        label = slot.label
        entry = slot.entry
        if entry is None:
            self.refuse_new_work()
            if self._registry is None:
                raise RuntimeError("child runs need a worker's registry of workflows")
            now = self.clock.time()
            row = store.run_row(**self._registry.get(workflow).new_run(input, limits.child_key(self.run_id, label),
                                                                       now))
            parent_id = self.run_id
            await self._commit(lambda conn: store.insert_child(conn, row, parent_id, label),
                               self.entry_op(slot, "child", EntryState.PENDING, codec.dumps(row["id"]), None, 1, now,
                                             None))
            child_id: str = row["id"]
            self.started_children = True
            if self._notify is not None:
                self._notify()
        elif entry.status == EntryState.PENDING:
            child_id = codec.loads(entry.output)
        if entry is None or entry.status == EntryState.PENDING:
            value = await self._await_child(slot, child_id, label)
        elif entry.status == _OK:
            value = codec.loads(entry.output)
        else:
            etype, message = error_parts(entry.error)
            raise StepError(label, etype, message, entry.attempts)
        if compensate is not None:
            self.register_compensation(slot, compensate, value, self.default_retry)
        return value

    async def _await_child(self, slot: store.Slot, child_id: str, label: str) -> Any:
        """Park on the child's finish signal until it is finished, then journal its
        outcome in the slot.  A dead-lettered child keeps its parent waiting: an
        operator's retry may still finish it.  A run that is stopping (cancel,
        timeout, rollback) still looks once: a child that finished meanwhile is
        journaled, so its effect is compensated with the rest (the park refuses)."""
        run_id, signal = self.run_id, store.child_signal(child_id)
        while True:
            def look(conn: Any) -> tuple[str, str | None, str | None]:
                status, output, error = store.child_outcome(conn, child_id)
                store.consume_signals(run_id, signal)(conn)
                if status in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED):
                    ok = status == RunState.COMPLETED
                    store.update_entry(conn, run_id, slot.branch, slot.key,
                                       status=EntryState.OK if ok else EntryState.ERROR,
                                       output=output if ok else None, error=None if ok else error,
                                       finished_at=self.clock.time())
                return status, output, error

            (status, output, error), = await self._commit(look)
            if status == RunState.COMPLETED:
                return codec.loads(output)
            if status in (RunState.FAILED, RunState.CANCELLED):
                etype, message = error_parts(error)
                raise StepError(label, etype, message, 1)
            await self.park(None, signal)

    def patched(self, change: str) -> bool:
        """Whether this run takes the code of ``change``: True where the run reaches this
        point first on code that asks (and from then on), False where its journal was
        recorded past this point before the change existed.  The answer is journaled
        once per run and change (no position taken: runs recorded without it replay
        unchanged), so every later execution, on any worker, gets the same one."""
        limits.slot_name(change, "patch")
        key = f"{change}{limits.OCCURRENCE_SEP}patch"
        entry = self._by_key.get(("", key))
        if entry is not None:
            return bool(codec.loads(entry.output))
        decided = self._patches.get(change)
        if decided is None:
            decided = self._patches[change] = not went_past(self._by_pos, self._state, _BRANCH.get())
            now = self.clock.time()
            slot = store.Slot("", -1, key, None)
            # buffered like ``now()``: flushed with the run's next durable write
            self._buffer.append(self.entry_op(slot, "patch", _OK, codec.dumps(decided), None, 1, now, now))
        return decided

    def now(self) -> dt.datetime:
        """Wall-clock time, recorded: a replay sees the same instant."""
        return to_datetime(self._recorded("now", self.clock.time))

    def uuid(self) -> _uuid.UUID:
        return _uuid.UUID(self._recorded("uuid", lambda: str(_uuid.uuid4())))

    def random(self) -> float:
        return float(self._recorded("random", _random.random))

    def branch(self, name: str, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` as a named branch; its steps are journaled under the branch path
        so a reorg can roll back one branch and keep its siblings."""
        return open_branch(self._state, self.tasks, name, work, self.branch_order)

    async def gather(self, *works: Coroutine[Any, Any, Any], names: list[str] | None = None) -> list[Any]:
        """``asyncio.gather`` where each awaitable runs as its own branch ("0", "1", ...)."""
        return await gather_branches(self.branch, works, names)

    async def submit(self, name: str, *, chain: str, tx: Any, idempotency_key: str | None = None,
                     finality: Finality | None = None, compensate: Callable[..., Any] | None = None,
                     retry: Retry | None = None) -> Receipt:
        """Submit an on-chain transaction exactly once and return its receipt once final.

        Inside a compensation the key is derived from the compensated intent (the
        given key, or the submit's name, namespaced under it): the same undo of the same
        intent is one submission, whichever run, execution or worker performs it."""
        if self._submitter is None:
            raise RuntimeError("this Chainflow app has no chains configured; pass chains=[...]")
        key = submission_key(name, idempotency_key)
        if compensate is not None:
            check_compensation(compensate, f"compensate of submit {name!r}")
        await self.settle()
        return await self._submitter.submit(self, name, chain=chain, tx=tx, idempotency_key=key,
                                            finality=finality, compensate=compensate, retry=retry)

    # --- slots and replay ------------------------------------------------------

    def _state(self, branch: str) -> BranchState:
        state = self._branches.get(branch)
        if state is None:
            state = self._branches[branch] = BranchState()
        return state

    def _slot(self, name: str, kind: str) -> store.Slot:
        if self.fatal is not None:
            raise self.fatal
        limits.slot_name(name, kind)
        branch = _BRANCH.get()
        position, key = self._state(branch).take(name)
        at_position = self._by_pos.get((branch, position))
        if at_position is not None and (at_position.key != key or at_position.kind != kind):
            self._nondeterminism(branch, position, f"{at_position.kind} {at_position.key}", f"{kind} {key}")
        entry = self._by_key.get((branch, key))
        if entry is not None and entry is not at_position:
            self._nondeterminism(branch, position, "nothing", f"{kind} {key}")
        self.generation += 1
        return store.Slot(branch, position, key, entry)

    def unasked(self) -> None:
        """Called once the workflow's code has ended by itself (returned or raised): stop
        the run (``fatal``) with ``NonDeterminismError`` naming the first operation, in
        recording order, that its journal holds and the code ended before asking for.
        The code changed under the run: finishing it would pass over that operation's
        effect, and its compensation would never be registered.  Only a branch that
        ended by itself tells; one cut off when the run ended (a sibling failed, nobody
        awaited it) may have been anywhere in its replay.  ``patched`` answers and
        compensations take no position: an answer nobody asks for any more is the
        documented way to retire a change."""
        skipped = [e for (branch, position), e in self._by_pos.items() if self._skipped(branch, position)]
        if skipped:
            first = min(skipped, key=lambda e: e.id)
            self.fatal = NonDeterminismError(self.run_id, first.branch, first.position,
                                             f"{first.kind} {first.key}", "nothing: its code ends before it")
            self.stop_reason = StopReason.FATAL

    def _skipped(self, branch: str, position: int) -> bool:
        """Whether code that has ended by itself passed over the journal's operation at
        ``position`` of ``branch``: its branch ended before that position, or its
        nearest branch opened in this execution ended without opening it."""
        if limits.in_compensation(branch):
            return False  # run by the compensations, after the workflow's code
        path = branch
        while path and not self.branch_order.seen(path):
            path = path.rpartition(limits.BRANCH_SEP)[0]
        if path and not self.branch_order.concluded(path):
            return False
        if path != branch:
            return True
        state = self._branches.get(path)
        return state is None or position >= state.position

    def _nondeterminism(self, branch: str, position: int, expected: str, actual: str) -> None:
        self.fatal = NonDeterminismError(self.run_id, branch, position, expected, actual)
        self.stop_reason = StopReason.FATAL
        raise self.fatal

    def register_compensation(self, slot: store.Slot, fn: Callable[..., Any], value: Any, retry: Retry,
                              timeout: float | None = None, origin: str | None = None,
                              settle: Callable[[], Awaitable[Landed | None]] | None = None) -> None:
        """``fn(value)`` (or ``fn(ctx, value)``) undoes the operation at ``slot`` if the
        run fails, is cancelled or rolled back.  Replayed operations keep their journal
        order; those completed in this execution come after all of them, in the order
        they completed.  ``origin`` names the intent undone (a submission's chain,
        sender and key); a step's is its slot in this run.  ``settle`` stands in for
        ``value`` when the operation was cut off (``RunScope``).  ``fn`` was checked by
        ``check_compensation`` before the operation ran."""
        if slot.entry is not None:
            order = (0, slot.entry.id)
        else:
            self._fresh += 1
            order = (1, self._fresh)
        if origin is None:
            origin = f"step\x1f{self.run_id}\x1f{slot.branch}\x1f{slot.key}"
        self.compensations.append(Compensation(order, slot, fn, value, retry, timeout, origin, settle))

    def slot(self, name: str, kind: str) -> store.Slot:
        """Slot allocation for extensions (on-chain submission) living outside this module."""
        return self._slot(name, kind)

    def _recorded(self, kind: str, make: Callable[[], Any]) -> Any:
        slot = self._slot(kind, kind)
        if slot.entry is not None:
            return codec.loads(slot.entry.output)
        value = make()
        now = self.clock.time()
        # buffered: committed with this run's next durable write, at the latest before
        # the next effect starts (``settle``), the first moment the value can influence
        # anything outside the process
        self._buffer.append(self.entry_op(slot, kind, _OK, codec.dumps(value), None, 1, now, now))
        return value

    def refuse_new_work(self) -> None:
        if self.fatal is not None:
            raise self.fatal
        if self.stop_reason in _REFUSING:
            raise RunCancelled(self.run_id)

    async def hold_lease(self) -> None:
        """Raise ``LeaseLostError`` unless this run is provably still ours: called where
        something is about to leave the process (a step or compensation attempt, a
        broadcast), so a worker that was frozen past its lease does not repeat work
        another worker has taken over.  A float comparison while the heartbeat keeps
        the lease fresh; a database round trip only once its deadline has passed."""
        if not await self.lease.prove():
            self.stop_reason = StopReason.LEASE_LOST
            raise LeaseLostError(self.run_id)

    def entry_op(self, slot: store.Slot, kind: str, status: EntryState, output: str | None, error: str | None,
                  attempts: int, started: float | None, finished: float | None) -> store.Op:
        return store.EntryInsert(dict(
            run_id=self.run_id, branch=slot.branch, position=slot.position, key=slot.key, kind=kind, status=status,
            output=output, error=error, attempts=attempts, started_at=started, finished_at=finished,
        ))

    # --- execution -------------------------------------------------------------

    async def commit(self, *ops: store.Op) -> list[Any]:
        """One durable, fenced transaction for this run (plus buffered records)."""
        return await self._commit(*ops)

    async def _commit(self, *ops: store.Op) -> list[Any]:
        batch = self._buffer + list(ops)
        deferred = self._deferred
        carried = bool(self._buffer)
        self._buffer, self._deferred = [], []
        landed: asyncio.Future[None] | None = None
        if carried:  # another branch's effect may have to wait for this commit (``settle``)
            landed = asyncio.get_running_loop().create_future()
            self._carrying.add(landed)
        self.busy(+1)
        try:
            # exclusive: this commit is the run's only work in flight
            results = await self._committer.write(self.run_id, self.fence, batch, exclusive=self.active == 1)
        except LeaseLostError:
            self.stop_reason = StopReason.LEASE_LOST
            raise
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            # the database, not the workflow, failed: abandon this execution (another
            # worker resumes it after the lease) instead of failing the run
            self.stop_reason = StopReason.LEASE_LOST
            raise LeaseLostError(self.run_id) from exc
        except Exception:
            self._buffer = batch[: len(batch) - len(ops)] + self._buffer  # rolled back: keep for the next write
            self._deferred = deferred + self._deferred
            raise
        finally:
            self.busy(-1)
            if landed is not None:
                self._carrying.discard(landed)
                landed.set_result(None)
        for done in deferred:
            self.announce("step_completed", *done)
        return results[len(results) - len(ops):]

    async def flush(self) -> None:
        if self._buffer:
            await self._commit()

    async def settle(self) -> None:
        """Commit the buffered rows -- deferred step rows, recorded ``now/uuid/random``
        values, ``patched`` answers: called before anything that could have an effect
        (a step attempt, a submission), so it never runs on a value a crash could take
        back (a step paying under a ``ctx.uuid()`` key would pay again under another).
        Rows another branch's commit has taken along are waited for: their commit may
        still be in flight.  Nothing buffered, nothing committed."""
        while self._carrying:
            await asyncio.wait(self._carrying)
            if self.stop_reason == StopReason.LEASE_LOST:  # that commit was refused
                raise LeaseLostError(self.run_id)
        if self._buffer:  # buffered meanwhile, or handed back by a commit that failed
            await self._commit()

    def busy(self, delta: int) -> None:
        """Count work in flight (+1 / -1): a run with work in flight is never parked."""
        self.active += delta
        self.touch()

    def touch(self) -> None:
        self.generation += 1
        # the driver only cares about moments when the run might be fully parked;
        # waking it on every step would cost more than the step's own bookkeeping
        if self.active == 0 and self.parks:
            self.changed.set()

    async def _execute(self, slot: store.Slot, kind: str, fn: Callable[..., Any], args: tuple[Any, ...],
                       kwargs: dict[str, Any], policy: Retry, limit: float | None,
                       undo: Callable[..., None] | None = None) -> tuple[str, Any]:
        """Attempts with journaled backoff; returns (encoded, decoded) output or raises StepError.

        ``undo(value)`` registers the compensation of the effect ``fn`` had, before its
        row's commit is awaited: a branch cancelled while waiting for that commit (a
        sibling failed) still has its row committed by the group commit, and its effect
        must then be undone with the rest.

        A sync attempt whose timeout fires while its thread runs is journaled failed on
        time, but nothing can stop the thread: the next attempt starts once the backoff
        is over *and* that thread has ended, so at most one attempt of a step executes
        at any moment.  Meanwhile the thread counts as work in flight: the run is never
        parked, since a resumed execution (perhaps on another worker) would know nothing
        of it -- which is also the limit of the promise: a run whose lease is lost all
        the same (its worker frozen, cut off from the database, or stopped) is resumed
        without it.  A thread that never returns keeps its run waiting for good -- running, its
        lease held, one step thread and one of the worker's run slots taken; a cancel still
        ends it at once -- and nothing else: the worker's other runs go on.  With
        ``undo``, a step left failed by such an attempt (its retries exhausted, or the run
        stopped before the next) has its compensation wait for the thread and undo what
        it returned (``_late``), and its run stays unparked until the thread ends, even
        past the step: only this execution can see what the thread returns.  Only the
        last attempt: an earlier one's effect is what a retry of the step repeats anyway."""
        self.refuse_new_work()
        tries = self.tries_of(slot)
        label = slot.label
        threaded = limit is not None and not inspect.iscoroutinefunction(fn)
        behind: asyncio.Future[Ended] | None = None  # the thread of the attempt that timed out
        try:
            while True:
                if tries:  # tested here: a step's first attempt costs no extra coroutine
                    await self.back_off(tries)
                if behind is not None:
                    await asyncio.wait([behind])
                    behind = None
                self.refuse_new_work()
                if time.monotonic() >= self.lease.deadline:  # the hot path pays a comparison
                    await self.hold_lease()
                await self.settle()  # the results this attempt may build on, durable first
                attempt = len(tries) + 1
                started = self.clock.time()
                ended = asyncio.get_running_loop().create_future() if threaded else None
                self.busy(+1)
                try:
                    result = await self._invoke(label, fn, args, kwargs, limit, outlast=undo is not None, ended=ended)
                    text, value = codec.roundtrip(result, what=f"output of step {label!r}")
                except BaseException as raised:
                    failure = own_failure(raised, f"step {label!r}")
                    # an output that cannot be stored would only fail again
                    last = not isinstance(failure, Exception) or isinstance(failure, PayloadError) or \
                        not policy.retryable(failure) or attempt >= policy.max_attempts
                    if ended is not None and not ended.done() and (undo is not None or not last):
                        behind = ended  # its thread runs on, and the next attempt or ``undo`` waits for it
                        self._hold(behind)
                    if not isinstance(failure, Exception):
                        raise
                    finished = self.clock.time()
                    if last:
                        await self.fail(slot, kind, failure, attempt, started)
                        raise StepError(label, type_name(failure), str(failure), attempt) from failure
                    await self.record_attempt(slot, tries, failure, started, finished, finished + policy.delay(attempt))
                    continue
                finally:
                    self.busy(-1)
                finished = self.clock.time()
                if undo is not None:
                    undo(value)
                entry = self.entry_op(slot, kind, _OK, text, None, attempt, started, finished)
                if kind == "step" and self.active == 0:
                    # the run's only work: deferred to its next durable write (module docstring)
                    self._buffer.append(entry)
                    self._deferred.append((label, attempt, started, finished))
                else:
                    await self._commit(entry)
                    self.announce("step_completed", label, attempt, started, finished)
                if undo is not None and _cancel_pending():
                    raise asyncio.CancelledError  # the stop that came while its thread ran (``_outlast``)
                self._journaled += 1
                if self._journaled % _YIELD_EVERY == 0:
                    # async steps that return at once, committed inline, never suspend: without
                    # this a long run would hold the loop and starve the lease's heartbeat
                    await asyncio.sleep(0)
                return text, value
        except BaseException:
            # the step ends unfinished (failed, or its run stopping) with its last
            # attempt's thread perhaps still at work
            if behind is not None:
                if undo is not None:
                    undo(None, settle=functools.partial(self._late, behind, label))
                elif behind.remove_done_callback(self._let_go):
                    self.busy(-1)  # no next attempt waits for it any more
            raise

    def tries_of(self, slot: store.Slot) -> list[store.AttemptRow]:
        """The slot's failed attempts, as journaled (loaded at claim) plus this
        execution's: attempt numbers and backoff resume from them after a park, a
        replay or another worker, instead of restarting at attempt 1."""
        return self._tries.setdefault((slot.branch, slot.key), [])

    async def back_off(self, tries: list[store.AttemptRow]) -> None:
        """Wait out the delay journaled with the last failed attempt (parks if long)."""
        if tries and tries[-1].next_at is not None:
            await self.park(tries[-1].next_at, None)

    async def record_attempt(self, slot: store.Slot, tries: list[store.AttemptRow], exc: BaseException,
                             started: float, finished: float, next_at: float) -> None:
        """Journal failed attempt ``len(tries) + 1`` and when the next may start, and
        announce it."""
        attempt, error, run_id = len(tries) + 1, describe_error(exc), self.run_id
        row = dict(branch=slot.branch, key=slot.key, attempt=attempt, error=error,
                   started_at=started, finished_at=finished, next_at=next_at)
        await self._commit(lambda conn: store.insert_attempt(conn, run_id, **row))
        tries.append(store.AttemptRow(attempt, error, next_at))
        self.announce("step_retried", slot.label, attempt, started, finished, exc)

    async def fail(self, slot: store.Slot, kind: str, exc: BaseException, attempt: int, started: float) -> None:
        """Journal the failure for good of the operation at ``slot`` and announce it."""
        finished = self.clock.time()
        await self._commit(self.entry_op(slot, kind, EntryState.ERROR, None, describe_error(exc), attempt, started,
                                         finished))
        self.announce("step_failed", slot.label, attempt, started, finished, exc)

    def announce(self, kind: str, label: str, attempt: int, started: float, finished: float,
                 failure: BaseException | None = None) -> None:
        """The lifecycle event of an attempt's end (``RunScope.announce``): the one
        place a step, a compensation and a submit tell hooks, metrics and spans."""
        self.events.emit(kind, run_id=self.run_id, workflow=self.workflow, step=label, attempt=attempt,
                         duration=finished - started, error=summary(failure))

    async def _invoke(self, label: str, fn: Callable[..., Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any], limit: float | None, outlast: bool = False,
                      ended: asyncio.Future[Ended] | None = None) -> Any:
        """``fn``'s outcome, within ``limit`` seconds.  ``outlast``: a sync step with a
        compensation, whose thread is waited for even if the run stops meanwhile.
        ``ended``: how a sync ``fn``'s thread ended, also once the timeout gave up on it
        (``ThreadPool.run``)."""
        threaded = not inspect.iscoroutinefunction(fn)
        if not threaded:
            work: Awaitable[Any] = fn(*args, **kwargs)
        else:
            thread = self._pool.run(functools.partial(fn, *args, **kwargs), ended=ended)
            self.threads += 1
            if limit is None:  # no coroutine of its own on the path most sync steps take
                try:
                    result = await (_outlast(thread, self) if outlast else thread)
                finally:
                    self._joined()
                return await result if inspect.isawaitable(result) else result
            work = self._returned(thread)
        if limit is None:
            return await work
        try:
            # in a task of its own, whose stray base exceptions would end the loop
            bounded = asyncio.ensure_future(contained(work, f"step {label!r}"))
            if inspect.iscoroutine(work):
                bounded.add_done_callback(lambda _: work.close())  # cancelled before it started
            return await asyncio.wait_for(bounded, limit)
        except TimeoutError:
            raise StepTimeout(label, limit) from None
        finally:
            if threaded:
                if ended is None or ended.done():
                    self._joined()
                else:  # a timeout gave up on it: it counts until it ends, so a stopping worker keeps the lease
                    ended.add_done_callback(lambda _: self._joined())

    def _joined(self) -> None:
        """A step call's thread ended (or, with no ``ended`` to tell, the step stopped awaiting it)."""
        self.threads -= 1
        if not self.threads and self.stop_reason is not None:
            self.changed.set()  # a stopping worker hands the run back once the last one is journaled

    def _hold(self, thread: asyncio.Future[Ended]) -> None:
        """Count the thread of an attempt given up on as work in flight until it ends
        (``_let_go``): the step's next attempt or its compensation waits for it."""
        self.busy(+1)
        thread.add_done_callback(self._let_go)

    def _let_go(self, _: asyncio.Future[Ended]) -> None:
        self.busy(-1)

    @staticmethod
    async def _late(thread: asyncio.Future[Ended], label: str) -> Landed | None:
        """What the thread of a step's last attempt returned, once it has ended, as its
        compensation sees a step's output (the journaled copy); nothing to undo when it
        raised, never ran, or returned what no journal could hold (as a step whose
        output cannot be stored fails without compensation).  The value lives in this
        execution only: a crash, or a park of the run's compensations before this one
        ran, leaves it undone."""
        await asyncio.wait([thread])
        if thread.cancelled():
            return None
        result, exc = thread.result()
        if exc is not None:
            return None
        try:
            return Landed(codec.roundtrip(result, what=f"output of step {label!r}")[1])
        except PayloadError:
            return None

    @staticmethod
    async def _returned(call: Awaitable[Any]) -> Any:
        """What a callable run in a thread returned, awaited when it is an awaitable (an
        object with ``async def __call__``, a lambda around an async function): the
        step's timeout bounds both."""
        result = await call
        if inspect.isawaitable(result):
            result = await result
        return result

    async def park(self, wake_at: float | None, signal: str | None) -> None:
        """Wait until ``wake_at`` (or a signal); the executor may unwind us meanwhile."""
        if wake_at is not None and self.clock.time() >= wake_at:
            return
        self.refuse_new_work()
        park = Park(wake_at, signal, asyncio.get_running_loop().create_future())
        self.parks.append(park)
        self.touch()
        try:
            await park.future
        finally:
            self.parks.remove(park)
            self.touch()
        self.refuse_new_work()

    async def run_compensations(self, facade: Callable[[Scope], Any], only: set[int] | None = None) -> list[str]:
        """Run registered compensations newest first, each journaled once; returns failures.

        ``facade`` makes the workflow-side context handed to a compensation that takes
        one; ``only``: journal entry ids whose compensations to run (a reorg rollback)."""
        failures: list[str] = []
        self.stop_reason = None  # compensations are new work that must be allowed
        self.compensating = True
        chosen = [c for c in self.compensations
                  if only is None or (c.slot.entry is not None and c.slot.entry.id in only)]
        for comp in sorted(chosen, key=lambda c: c.order, reverse=True):
            key = f"{limits.COMPENSATION_PREFIX}{comp.slot.key}"
            slot = store.Slot(comp.slot.branch, -1, key, self._by_key.get((comp.slot.branch, key)))
            if slot.entry is not None:
                if slot.entry.status != EntryState.OK:
                    failures.append(slot.key)
                continue
            if comp.settle is None:
                value = comp.value
            elif (landed := await comp.settle()) is not None:
                value = landed.value
            else:
                continue  # the cut-off operation had no effect to undo
            try:
                # which form: told once more here, for the few compensations that run,
                # rather than kept for every registration
                if takes_context(comp.fn, f"compensation of {comp.slot.key!r}"):
                    await self._compensate_in_branch(slot, comp, value, facade)
                else:
                    await self._execute(slot, "compensation", comp.fn, (value,), {}, comp.retry, comp.timeout)
            except StepError:
                failures.append(slot.key)
        return failures

    async def _compensate_in_branch(self, slot: store.Slot, comp: Compensation, value: Any,
                                    facade: Callable[[Scope], Any]) -> None:
        """Run ``fn(ctx, value)`` like a small workflow in a branch of its own.

        Its steps, sleeps and submissions take journal slots under
        ``limits.compensation_branch`` of the compensated slot, so a later execution
        (after a park or a crash) replays what it did and continues where it stopped;
        its submissions derive their keys from ``comp.origin``; the compensation's own
        entry (``slot``) is journaled once the body returns, so it completes once.

        The body is not retried as a whole: each of its steps and submissions carries
        its own retry policy and timeout (a timeout around the body would cut a
        submission waiting for its confirmations), and a step that failed for good
        would only fail again on replay."""
        self.refuse_new_work()
        label = slot.label
        branch = _BRANCH.set(limits.compensation_branch(comp.slot.branch, comp.slot.key))
        origin = _ORIGIN.set(comp.origin)
        started = self.clock.time()
        try:
            result = await comp.fn(facade(self), value)
            text, _ = codec.roundtrip(result, what=f"output of compensation {label!r}")
        except (LeaseLostError, NonDeterminismError):
            raise  # the execution's end, not the compensation's failure
        except Exception as exc:
            await self.fail(slot, "compensation", exc, 1, started)
            raise StepError(label, type_name(exc), str(exc), 1) from exc
        finally:
            _BRANCH.reset(branch)
            _ORIGIN.reset(origin)
        finished = self.clock.time()
        await self._commit(self.entry_op(slot, "compensation", _OK, text, None, 1, started, finished))
        self.announce("step_completed", label, 1, started, finished)

