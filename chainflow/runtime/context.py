"""``Context``: what workflow code may call, and nothing else.

A workflow function receives a ``Context``.  Everything on it is safe to call from
workflow code and is journaled or recorded so a replay sees the same values; the
runtime state underneath (slots, the fenced commit, parks, the lease, compensations,
stop reasons) lives on the execution's ``Scope``, out of reach, so a workflow cannot
reach into the engine by accident and the engine can change without breaking it.
Each method hands straight to the scope (no extra coroutine frame on the step path).

What the facade needs of the object under it is ``Operations``: a live execution's
``Scope`` provides it, and so does replay's recording-backed scope, which runs the
same workflow code against a history without touching the database.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid as _uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

from ..retry import Retry

if TYPE_CHECKING:
    from ..chain.adapter import Receipt
    from ..chain.finality import Finality

T = TypeVar("T")

_log = logging.getLogger("chainflow.workflow")


class Operations(Protocol):
    """What ``Context`` hands each call to (see the methods of ``Context``)."""

    run_id: str
    workflow: str

    def step(self, name: str, fn: Callable[..., Any], /, *args: Any, retry: Retry | None = None,
             timeout: float | dt.timedelta | None = None, compensate: Callable[..., Any] | None = None,
             **kwargs: Any) -> Coroutine[Any, Any, Any]: ...

    def sleep(self, name: str, duration: float | dt.timedelta) -> Coroutine[Any, Any, None]: ...

    def wait_for(self, name: str, timeout: float | dt.timedelta | None = None) -> Coroutine[Any, Any, Any]: ...

    def submit(self, name: str, *, chain: str, tx: Any, idempotency_key: str | None = None,
               finality: Finality | None = None, compensate: Callable[..., Any] | None = None,
               retry: Retry | None = None) -> Coroutine[Any, Any, Receipt]: ...

    def child(self, name: str, workflow: str, input: Any = None, *,
              compensate: Callable[..., Any] | None = None) -> Coroutine[Any, Any, Any]: ...

    def patched(self, change: str) -> bool: ...

    def branch(self, name: str, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]: ...

    def gather(self, *works: Coroutine[Any, Any, Any],
               names: list[str] | None = None) -> Coroutine[Any, Any, list[Any]]: ...

    def now(self) -> dt.datetime: ...

    def uuid(self) -> _uuid.UUID: ...

    def random(self) -> float: ...


class Context:
    """Handed to each workflow function; one per execution of a run."""

    __slots__ = ("_scope", "log")

    def __init__(self, scope: Operations) -> None:
        self._scope = scope
        #: a logger whose records carry the run id and workflow name (``extra``)
        self.log = logging.LoggerAdapter(_log, {"run_id": scope.run_id, "workflow": scope.workflow})

    @property
    def run_id(self) -> str:
        return self._scope.run_id

    @property
    def workflow(self) -> str:
        return self._scope.workflow

    # two signatures, so a type checker infers an ``async def`` step's result (the value
    # it returns, not its coroutine) as well as a plain function's
    @overload
    def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        retry: Retry | None = None,
        timeout: float | dt.timedelta | None = None,
        compensate: Callable[[T], Any] | Callable[[Context, T], Awaitable[Any]] | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, T]: ...

    @overload
    def step(
        self,
        name: str,
        fn: Callable[..., T],
        /,
        *args: Any,
        retry: Retry | None = None,
        timeout: float | dt.timedelta | None = None,
        compensate: Callable[[T], Any] | Callable[[Context, T], Awaitable[Any]] | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, T]: ...

    def step(
        self,
        name: str,
        fn: Callable[..., Any],
        /,
        *args: Any,
        retry: Retry | None = None,
        timeout: float | dt.timedelta | None = None,
        compensate: Callable[..., Any] | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, Any]:
        """Run ``fn(*args, **kwargs)`` once (modulo retries), journal its result and
        return the journaled copy; on replay the journaled result comes back without
        calling ``fn``.  ``compensate(output)`` undoes it if the run later fails;
        ``async def compensate(ctx, output)`` may itself run steps and submit
        transactions, each journaled once in a branch of its own."""
        return self._scope.step(name, fn, *args, retry=retry, timeout=timeout, compensate=compensate, **kwargs)

    def sleep(self, name: str, duration: float | dt.timedelta) -> Coroutine[Any, Any, None]:
        """Durable sleep: the process may be down meanwhile; wakes on the engine's clock."""
        return self._scope.sleep(name, duration)

    def wait_for(self, name: str, timeout: float | dt.timedelta | None = None) -> Coroutine[Any, Any, Any]:
        """Wait for the signal ``name``; one sent before this point is kept and returned.
        Raises ``WaitTimeout`` after ``timeout``."""
        return self._scope.wait_for(name, timeout)

    def submit(self, name: str, *, chain: str, tx: Any, idempotency_key: str | None = None,
               finality: Finality | None = None,
               compensate: Callable[[Receipt], Any] | Callable[[Context, Receipt], Awaitable[Any]] | None = None,
               retry: Retry | None = None) -> Coroutine[Any, Any, Receipt]:
        """Submit an on-chain transaction exactly once (per ``idempotency_key``) and
        return its receipt once ``finality`` holds (default: one confirmation).

        ``idempotency_key`` is required in workflow code.  In a compensation
        (``async def undo(ctx, receipt)``) it is optional and namespaced under the
        compensated intent: the undo of one intent is one submission, ever."""
        return self._scope.submit(name, chain=chain, tx=tx, idempotency_key=idempotency_key, finality=finality,
                                  compensate=compensate, retry=retry)

    def child(self, name: str, workflow: str, input: Any = None, *,
              compensate: Callable[[Any], Any] | Callable[[Context, Any], Awaitable[Any]] | None = None,
              ) -> Coroutine[Any, Any, Any]:
        """Start the registered ``workflow`` with ``input`` as a child run and return its
        output once it completes; awaited like a step (this run parks, holding no
        worker, meanwhile).  The child starts once: its id is journaled in this slot and
        its idempotency key derives from this run and slot.  A failed or cancelled child
        raises ``StepError`` here; cancelling this run cancels the child.
        ``compensate(output)`` undoes a completed child if this run later fails, is
        cancelled or rolled back (docs/operations.md)."""
        return self._scope.child(name, workflow, input, compensate=compensate)

    def patched(self, change: str) -> bool:
        """Whether this run takes the code of ``change`` (a name for a code change):
        True for runs that reach this point first on code asking it, False for runs
        whose journal went past this point before it existed.  Journaled, so the run
        keeps its answer on every later execution.  Keep both paths until no run
        recorded before the change is unfinished (docs/operations.md)."""
        return self._scope.patched(change)

    def branch(self, name: str, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` as a named branch; its steps are journaled under the branch path
        so a reorg can roll back one branch and keep its siblings."""
        return self._scope.branch(name, work)

    def gather(self, *works: Coroutine[Any, Any, Any],
               names: list[str] | None = None) -> Coroutine[Any, Any, list[Any]]:
        """``asyncio.gather`` where each awaitable runs as its own branch ("0", "1", ...
        or ``names``)."""
        return self._scope.gather(*works, names=names)

    def now(self) -> dt.datetime:
        """Wall-clock time, recorded: a replay sees the same instant."""
        return self._scope.now()

    def uuid(self) -> _uuid.UUID:
        """A random UUID, recorded: a replay sees the same one."""
        return self._scope.uuid()

    def random(self) -> float:
        """A random float in [0, 1), recorded: a replay sees the same one."""
        return self._scope.random()

    def __repr__(self) -> str:
        return f"<chainflow.Context run={self.run_id!r} workflow={self.workflow!r}>"
