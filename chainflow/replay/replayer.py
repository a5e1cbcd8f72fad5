"""Executing workflow code against a recorded history: the replay scope.

``ReplayScope`` stands where a live execution's ``runtime.scope.Scope`` stands under
``Context``, with every operation served from the history instead of the database and
the chain: a step that is not overridden returns its recorded output (or raises its
recorded error), ``ctx.now/uuid/random`` their recorded values, ``wait_for`` the
recorded signal payloads in their order, ``sleep`` returns at once, ``submit`` the
recorded receipt.  Nothing is written, signed, broadcast or signalled anywhere: the
scope holds no database handle and calls no adapter method but the pure ``prepare``
and ``describe`` and, when a transaction changed, the read-only ``simulate``.

Slots are taken exactly as a live execution takes them (``BranchState.take``), so the
same code asks for the same slots; when new code asks for another operation than
history holds at a position, the replay continues in *divergent* mode, matching later
operations by branch and key, and names the first divergence.  Code runs only where
it is new (an overridden step, or an operation history does not hold) and only if it
is marked pure or effects are allowed; otherwise the report says "would run" and the
branch stops there when the workflow needs a value history cannot give.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import random as _random
import time
import uuid as _uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..chain.adapter import ChainAdapter, Receipt, Simulator
from ..clock import seconds, to_datetime, to_seconds
from ..errors import StepError, StepTimeout, WaitTimeout, describe_error, error_parts, type_name
from ..retry import Retry
from ..runtime.context import Context
from ..runtime.registry import WorkflowDef
from ..runtime.scope import (
    _BRANCH,
    _ORIGIN,
    BranchState,
    check_compensation,
    check_step,
    gather_branches,
    open_branch,
    submission_key,
    takes_context,
    went_past,
)
from ..states import TERMINAL, EntryState, RunState
from ..storage import codec, limits
from .diff import diff
from .history import History, RecordedEntry
from .report import Change, RunReport, StepReport, TxComparison

T = TypeVar("T")
_ARGS_SHOWN = 120  # characters of a would-run call's arguments in the report


@dataclass(frozen=True)
class Override:
    """New code for a step: ``pure`` code runs freely in a replay; effectful code (the
    default) runs only when effects are allowed, else it is reported as "would run"."""

    fn: Callable[..., Any]
    pure: bool = False


@dataclass(frozen=True)
class ReplayOptions:
    steps: Mapping[str, Override] = field(default_factory=dict)
    pure: frozenset[str] = frozenset()  # step names whose code may run when history lacks them
    allow_effects: bool = False
    chains: Mapping[str, ChainAdapter] = field(default_factory=dict)


class _Halt(BaseException):
    """The replay cannot continue in this branch: the workflow needs a value history
    does not hold and the code that would produce it may not run.  A BaseException, so
    workflow code catching ``Exception`` does not swallow it."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status  # the replayed status: "halted", or the live run's where history ends


class _Stopped(BaseException):
    """History ends where the live run was stopped (cancelled, timed out): the replay
    stops there too and runs the compensations, as the executor did."""


@dataclass(frozen=True)
class _Slot:
    branch: str
    position: int
    key: str
    entry: RecordedEntry | None
    divergence: str | None  # set at the operation where new code first left history

    @property
    def label(self) -> str:
        return limits.label(self.branch, self.key)


@dataclass
class _Compensation:
    order: tuple[int, int]
    branch: str
    key: str
    fn: Callable[..., Any]
    value: Any
    origin: str


def call_text(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    shown = ", ".join([*(repr(a) for a in args), *(f"{k}={v!r}" for k, v in kwargs.items())])
    if len(shown) > _ARGS_SHOWN:
        shown = shown[:_ARGS_SHOWN - 1] + "…"
    return f"{name}({shown})"


class ReplayScope:
    """One replay of one run (see the module docstring); implements ``context.Operations``."""

    def __init__(self, history: History, options: ReplayOptions) -> None:
        self.history = history
        self.run_id = history.run.id
        self.workflow = history.run.workflow
        self._options = options
        live = history.live()
        self._by_pos = {(e.branch, e.position): e for e in live if e.position >= 0}
        self._by_key = {(e.branch, e.key): e for e in live}
        self._branches: dict[str, BranchState] = {}
        self._patches: dict[str, bool] = {}
        self._used: set[int] = set()
        self._ongoing = history.run.status not in TERMINAL  # history ends where the run is now
        error_type = error_parts(history.run.error)[0] if history.run.error else ""
        self._stopped = history.run.status == RunState.CANCELLED or error_type.endswith(".WorkflowTimeout")
        self.reports: list[StepReport] = []
        self.divergence: str | None = None
        self.compensations: list[_Compensation] = []
        self.tasks: set[asyncio.Future[Any]] = set()
        self._fresh = 0

    # --- slots -------------------------------------------------------------------

    def _state(self, branch: str) -> BranchState:
        state = self._branches.get(branch)
        if state is None:
            state = self._branches[branch] = BranchState()
        return state

    def _slot(self, name: str, kind: str) -> _Slot:
        limits.slot_name(name, kind)
        branch = _BRANCH.get()
        position, key = self._state(branch).take(name)
        return self._match(branch, position, key, kind)

    def _match(self, branch: str, position: int, key: str, kind: str, compensation: bool = False) -> _Slot:
        by_key = self._by_key.get((branch, key))
        if by_key is not None and (by_key.kind != kind or by_key.id in self._used):
            by_key = None
        if self.divergence is not None:
            return self._take(_Slot(branch, position, key, by_key, None))
        at = self._by_pos.get((branch, position)) if position >= 0 else by_key
        if at is not None and at.key == key and at.kind == kind:
            return self._take(_Slot(branch, position, key, at, None))
        if at is None and by_key is None:
            if compensation:
                return _Slot(branch, position, key, None, None)
            if self._ongoing:
                raise _Halt(self.history.run.status)  # the live run has not got here yet
            if self._stopped:
                raise _Stopped()  # where the live run was cancelled or timed out
            return _Slot(branch, position, key, None, None)
        where = f"position {position} of branch {branch!r}" if branch else f"position {position}"
        held = f"{at.kind} {at.label!r}" if at is not None else "nothing"
        self.divergence = (f"at {where}: history holds {held}, the new code asks for "
                           f"{kind} {_Slot(branch, position, key, None, None).label!r}")
        return self._take(_Slot(branch, position, key, by_key, self.divergence))

    def _take(self, slot: _Slot) -> _Slot:
        if slot.entry is not None:
            self._used.add(slot.entry.id)
        return slot

    def _report(self, slot: _Slot, kind: str, change: Change, detail: str = "", **extra: Any) -> None:
        if slot.divergence is not None:  # the first divergence is named where it happened
            change, detail = Change.DIVERGENCE, f"{slot.divergence}; {detail}" if detail else slot.divergence
        self.reports.append(StepReport(slot.label, kind, change, detail, **extra))

    def _may_run(self, name: str, override: Override | None) -> bool:
        return (override is not None and override.pure) or name in self._options.pure or self._options.allow_effects

    # --- operations (``context.Operations``) -----------------------------------------

    async def step(self, name: str, fn: Callable[..., T | Awaitable[T]], /, *args: Any, retry: Retry | None = None,
                   timeout: float | dt.timedelta | None = None, compensate: Callable[..., Any] | None = None,
                   **kwargs: Any) -> T:
        limit = None if timeout is None else to_seconds(timeout, f"timeout of step {name!r}", positive=True)
        if compensate is not None:
            check_compensation(compensate, f"compensate of step {name!r}")
        check_step(name, fn, retry)
        slot = self._slot(name, "step")
        override = self._options.steps.get(name)
        entry = slot.entry
        if entry is not None and override is None:
            self._report(slot, "step", Change.UNCHANGED)
            value = self._recorded_value(slot.label, entry)
        elif not self._may_run(name, override):
            call = call_text(name, args, kwargs)
            if entry is None:
                self._report(slot, "step", Change.WOULD_RUN, f"would run: {call}")
                raise _Halt("halted")
            self._report(slot, "step", Change.WOULD_RUN, f"would run: {call} (new code, effectful: pass "
                                                          "allow_effects / --allow-effects, or mark it pure)")
            value = self._recorded_value(slot.label, entry)
        else:
            value = await self._run(slot, (override.fn if override is not None else fn), args, kwargs, limit)
        if compensate is not None:
            self._register(slot, compensate, value, None)
        return value  # type: ignore[no-any-return]

    def _recorded_value(self, label: str, entry: RecordedEntry) -> Any:
        """The recorded output, or the recorded failure raised as the run saw it live."""
        if entry.ok:
            return codec.loads(entry.output)
        etype, message = error_parts(entry.error)
        raise StepError(label, etype, message, entry.attempts)

    async def _run(self, slot: _Slot, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                   limit: float | None) -> Any:
        """Run new code once (no retries: a replay has no time to wait out a backoff)
        and compare what it gives with what history holds."""
        entry, label = slot.entry, slot.label
        error: BaseException | None = None
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                if limit is None:
                    result = await result
                else:
                    try:
                        result = await asyncio.wait_for(result, limit)
                    except TimeoutError:
                        raise StepTimeout(label, limit) from None
            text, value = codec.roundtrip(result, what=f"output of step {label!r}")
        except Exception as exc:  # noqa: BLE001 - the step's failure is what is compared
            error = exc
        if error is not None:
            etype, message = type_name(error), str(error)
            if entry is None:
                self._report(slot, "step", Change.NEW, f"ran and failed: {etype}: {message}")
            elif not entry.ok and error_parts(entry.error) == (etype, message):
                self._report(slot, "step", Change.UNCHANGED, "ran: the same error")
            else:
                was = "succeeded" if entry.ok else "failed with {}: {}".format(*error_parts(entry.error))
                self._report(slot, "step", Change.ERROR_CHANGED, f"now fails with {etype}: {message}; it {was}")
            raise StepError(label, etype, message, entry.attempts if entry is not None else 1) from error
        if entry is None:
            self._report(slot, "step", Change.NEW, f"ran: {codec.dumps(value)[:_ARGS_SHOWN]}")
        elif not entry.ok:
            self._report(slot, "step", Change.ERROR_CHANGED,
                         "now succeeds; it failed with {}: {}".format(*error_parts(entry.error)))
        else:
            found = diff(codec.loads(entry.output), value)
            self._report(slot, "step", Change.OUTPUT_CHANGED if found else Change.UNCHANGED, "ran", diff=found)
        return value

    async def sleep(self, name: str, duration: float | dt.timedelta) -> None:
        length = to_seconds(duration, f"duration of sleep {name!r}")
        slot = self._slot(name, "sleep")
        if slot.entry is not None:
            self._report(slot, "sleep", Change.UNCHANGED)
        else:
            self._report(slot, "sleep", Change.NEW, f"sleeps {length}s (not waited in a replay)")

    async def wait_for(self, name: str, timeout: float | dt.timedelta | None = None) -> Any:
        seconds(timeout, f"timeout of wait_for {name!r}")
        limits.text(name, "wait_for signal name", limits.SIGNAL_LENGTH)
        slot = self._slot(name, "wait")
        entry = slot.entry
        if entry is None:
            self._report(slot, "wait", Change.NEW, f"would wait for signal {name!r}")
            raise _Halt("halted")
        if entry.status == EntryState.OK:
            self._report(slot, "wait", Change.UNCHANGED)
            return codec.loads(entry.output)
        if entry.status == EntryState.TIMEOUT:
            self._report(slot, "wait", Change.UNCHANGED, "timed out")
            raise WaitTimeout(name)
        self._report(slot, "wait", Change.UNCHANGED, f"history ends here: the run waits for signal {name!r}")
        raise _Halt(self.history.run.status)

    async def submit(self, name: str, *, chain: str, tx: Any, idempotency_key: str | None = None,
                     finality: Any = None, compensate: Callable[..., Any] | None = None,
                     retry: Retry | None = None) -> Receipt:
        key = submission_key(name, idempotency_key)
        if compensate is not None:
            check_compensation(compensate, f"compensate of submit {name!r}")
        slot = self._slot(name, "submit")
        adapter = self._options.chains.get(chain)
        entry = slot.entry
        if adapter is None:
            if entry is None:
                self._report(slot, "submit", Change.WOULD_RUN, f"would submit on {chain!r}, a chain this app "
                                                                "does not configure")
                raise _Halt("halted")
            self._report(slot, "submit", Change.UNCHANGED, f"transaction not compared: this app configures no "
                                                           f"chain {chain!r}")
        else:
            request = adapter.prepare(tx)  # pure: plain data, nothing signed or sent
            if entry is None:
                self._report(slot, "submit", Change.WOULD_RUN, f"would submit on {chain!r} (not sent in a replay)",
                             tx=TxComparison(chain, None, _described(adapter, request), None, key,
                                             not_simulated="history holds no block to simulate it at"))
                raise _Halt("halted")
            await self._compare_tx(slot, adapter, request, key)
        assert entry is not None
        if not entry.ok:
            etype, message = error_parts(entry.error)
            raise StepError(slot.label, etype, message, entry.attempts)
        receipt = Receipt.from_dict(codec.loads(entry.output))
        if compensate is not None:
            sender = adapter.sender() if adapter is not None else ""
            self._register(slot, compensate, receipt, f"submit\x1f{chain}\x1f{sender}\x1f{key}")
        return receipt

    async def _compare_tx(self, slot: _Slot, adapter: ChainAdapter, request: dict[str, Any], key: str) -> None:
        assert slot.entry is not None
        recorded = self.history.submission_for(slot.entry)
        if recorded is None:
            self._report(slot, "submit", Change.UNCHANGED, "no recorded submission to compare the transaction with")
            return
        before = codec.loads(recorded.request)
        if recorded.idempotency_key == key and _same_payment(before, request):
            self._report(slot, "submit", Change.UNCHANGED)
            return
        simulation: dict[str, Any] | None = None
        not_simulated: str | None = None
        if not isinstance(adapter, Simulator):
            not_simulated = f"the adapter of chain {adapter.name!r} cannot simulate"
        elif recorded.block_number is None:
            not_simulated = "the recorded transaction was never included: no block to simulate at"
        else:
            # the state the recorded transaction's block started from
            try:
                result = await adapter.simulate(request, int(recorded.block_number) - 1)
                simulation = {"block_number": result.block_number, "succeeded": result.succeeded,
                              "detail": result.detail}
            except Exception as exc:  # noqa: BLE001 - a node that cannot answer for that block
                not_simulated = f"the node could not answer for block {int(recorded.block_number) - 1}: " \
                                f"{type(exc).__name__}: {exc}"
        what = "idempotency key" if recorded.idempotency_key != key else "transaction"
        if recorded.idempotency_key != key and _same_payment(before, request):
            detail = "same transaction under another idempotency key: live, it would be a second payment"
        else:
            detail = f"the new code builds another {what}; the recorded receipt is returned"
        self._report(slot, "submit", Change.TX_CHANGED, detail, tx=TxComparison(
            recorded.chain, _described(adapter, before), _described(adapter, request), recorded.idempotency_key, key,
            simulation, not_simulated))

    async def child(self, name: str, workflow: str, input: Any = None, *,
                    compensate: Callable[..., Any] | None = None) -> Any:
        """The recorded child's outcome; a replay starts no run."""
        if compensate is not None:
            check_compensation(compensate, f"compensate of child {name!r}")
        slot = self._slot(name, "child")
        entry = slot.entry
        if entry is None:
            self._report(slot, "child", Change.NEW, f"would start a child run of {workflow!r}")
            raise _Halt("halted")
        if entry.status == EntryState.PENDING:
            self._report(slot, "child", Change.UNCHANGED, "history ends here: the run waits for its child")
            raise _Halt(self.history.run.status)
        self._report(slot, "child", Change.UNCHANGED)
        value = self._recorded_value(slot.label, entry)
        if compensate is not None:
            self._register(slot, compensate, value, None)
        return value

    def patched(self, change: str) -> bool:
        """The recorded answer; where history holds none, decided as a live execution
        would (False if history goes past this point, else True)."""
        limits.slot_name(change, "patch")
        key = f"{change}{limits.OCCURRENCE_SEP}patch"
        entry = self._by_key.get(("", key))
        if entry is not None:
            self._used.add(entry.id)
            return bool(codec.loads(entry.output))
        if change not in self._patches:
            self._patches[change] = not went_past(self._by_pos, self._state, _BRANCH.get())
        return self._patches[change]

    def now(self) -> dt.datetime:
        return to_datetime(self._recorded("now", time.time))

    def uuid(self) -> _uuid.UUID:
        return _uuid.UUID(self._recorded("uuid", lambda: str(_uuid.uuid4())))

    def random(self) -> float:
        return float(self._recorded("random", _random.random))

    def _recorded(self, kind: str, make: Callable[[], Any]) -> Any:
        slot = self._slot(kind, kind)
        if slot.entry is not None:
            self._report(slot, kind, Change.UNCHANGED)
            return codec.loads(slot.entry.output)
        value = make()
        self._report(slot, kind, Change.NEW, "a fresh value (history holds none here)")
        return value

    def branch(self, name: str, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        return open_branch(self._state, self.tasks, name, work)

    async def gather(self, *works: Coroutine[Any, Any, Any], names: list[str] | None = None) -> list[Any]:
        return await gather_branches(self.branch, works, names)

    # --- compensations ---------------------------------------------------------------

    def _register(self, slot: _Slot, fn: Callable[..., Any], value: Any, origin: str | None) -> None:
        if slot.entry is not None:
            order = (0, slot.entry.id)
        else:
            self._fresh += 1
            order = (1, self._fresh)
        origin = origin or f"step\x1f{self.run_id}\x1f{slot.branch}\x1f{slot.key}"
        self.compensations.append(_Compensation(order, slot.branch, slot.key, fn, value, origin))

    async def compensate(self) -> None:
        """The compensations the run failing registered, newest first, as the executor
        runs them: a recorded one is not run again; a new one that takes a context
        replays its own operations; a new plain one would run."""
        for comp in sorted(self.compensations, key=lambda c: c.order, reverse=True):
            key = f"{limits.COMPENSATION_PREFIX}{comp.key}"
            slot = self._match(comp.branch, -1, key, "compensation", compensation=True)
            if slot.entry is not None:
                self._report(slot, "compensation", Change.UNCHANGED)
                continue
            if not takes_context(comp.fn, f"compensation of {comp.key!r}"):
                self._report(slot, "compensation", Change.WOULD_RUN,
                             f"would run: {call_text(getattr(comp.fn, '__name__', 'compensation'), (comp.value,), {})}")
                continue
            branch = _BRANCH.set(limits.compensation_branch(comp.branch, comp.key))
            origin = _ORIGIN.set(comp.origin)
            try:
                await comp.fn(Context(self), comp.value)
                self._report(slot, "compensation", Change.NEW, "ran (its operations are listed under its branch)")
            except Exception as exc:  # noqa: BLE001 - reported, like the executor's failed compensation
                self._report(slot, "compensation", Change.NEW, f"ran and failed: {type(exc).__name__}: {exc}")
            finally:
                _BRANCH.reset(branch)
                _ORIGIN.reset(origin)

    # --- the rest of history -------------------------------------------------------------

    def untouched(self, change: Change) -> None:
        """Report every live entry the replay never asked for as ``change``, but a
        ``patched`` answer True: removing the call once no run answers False is how a
        change is retired (docs/operations.md, Versioning), and the run's operations
        tell whether the code still does what that answer chose.  An answer False
        nobody asks for is reported: the code no longer has the old path the run took."""
        for e in self.history.live():
            if e.id not in self._used and not (e.kind == "patch" and codec.loads(e.output) is True):
                self.reports.append(StepReport(e.label, e.kind, change,
                                               "recorded, never asked for by the new code" if change == Change.MISSING
                                               else "recorded, after the point where the replay stopped"))


def _same_payment(recorded: dict[str, Any], request: dict[str, Any]) -> bool:
    """Whether the new code's prepared ``request`` is the recorded one: every field it
    sets (an EVM call's to, value, data; a UTXO payment's outputs) recorded alike.  The
    recorded request was estimated too, which only fills fields in (an EVM gas limit
    left None, a fee rate)."""
    return all(recorded.get(f) == v for f, v in request.items() if v is not None)


def _described(adapter: ChainAdapter, request: dict[str, Any]) -> dict[str, Any]:
    if isinstance(adapter, Simulator):
        return adapter.describe(request)
    return {k: request.get(k) for k in ("to", "value", "data")}


async def replay(history: History, wf: WorkflowDef, options: ReplayOptions) -> RunReport:
    """Run ``wf`` against ``history`` and compare everything it does with it."""
    scope = ReplayScope(history, options)
    run = history.run
    status, output, error = RunState.COMPLETED.value, None, None
    token = _BRANCH.set("")
    try:
        arg = wf.decode_input(codec.loads(run.input))
        try:
            result = await wf.fn(Context(scope), arg)
            output = codec.dumps(result, what=f"result of workflow {wf.name!r}")
        except _Halt as halt:
            status = halt.status
        except _Stopped:
            status, error = run.status, run.error
            await scope.compensate()
        except Exception as exc:  # noqa: BLE001 - the workflow failing is a result to compare
            status, error = RunState.FAILED.value, describe_error(exc)
            await scope.compensate()
    finally:
        _BRANCH.reset(token)
        for task in list(scope.tasks):
            task.cancel()
        if scope.tasks:
            await asyncio.gather(*scope.tasks, return_exceptions=True)
    halted = status not in (RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED)
    scope.untouched(Change.NOT_REACHED if halted else Change.MISSING)
    output_diff = diff(codec.loads(run.output), codec.loads(output)) \
        if status == RunState.COMPLETED and run.status == RunState.COMPLETED else []
    error_changed = None
    if status == RunState.FAILED and run.status == RunState.FAILED and error_parts(error) != error_parts(run.error):
        error_changed = "{}: {}".format(*error_parts(run.error)) + " -> " + "{}: {}".format(*error_parts(error))
    invalidated = [{"step": e.label, "kind": e.kind, "reason": e.reason} for e in history.entries if e.superseded]
    return RunReport(run.id, run.workflow, run.status, status, scope.reports, output_diff, error_changed,
                     scope.divergence, invalidated)
