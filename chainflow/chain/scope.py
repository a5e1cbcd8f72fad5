"""``RunScope``: what the submission protocol needs from the run it submits for.

The protocol lives in the chain layer and the run's execution in the runtime above
it; the protocol asks for these operations by this interface instead of importing the
runtime, so the layers stay one-way.  The runtime's per-execution object provides
them; workflow code never sees them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..clock import Clock
from ..retry import Retry
from ..states import EntryState
from ..storage import store


@dataclass(frozen=True)
class Landed:
    """What an operation cut off unfinished turned out to have done, for its
    compensation to undo: a boxed ``value``, since any value -- None too, a step's
    plain return -- may be the effect."""

    value: Any


class RunScope(Protocol):
    run_id: str
    clock: Clock
    default_retry: Retry

    def slot(self, name: str, kind: str) -> store.Slot:
        """Take the next journal slot of the calling branch (replay-checked)."""

    def refuse_new_work(self) -> None:
        """Raise if the run is stopping (cancel, timeout, rollback, fatal error)."""

    async def hold_lease(self) -> None:
        """Raise ``LeaseLostError`` unless the run is provably still ours."""

    def entry_op(self, slot: store.Slot, kind: str, status: EntryState, output: str | None, error: str | None,
                 attempts: int, started: float | None, finished: float | None) -> store.Op:
        """The journal row of ``slot`` as an op for ``commit``."""

    async def commit(self, *ops: store.Op) -> list[Any]:
        """Apply ``ops`` in one durable transaction fenced by the run's lease."""

    def tries_of(self, slot: store.Slot) -> list[store.AttemptRow]:
        """The journaled failed attempts of ``slot``."""

    async def back_off(self, tries: list[store.AttemptRow]) -> None:
        """Wait until the last failed attempt's journaled ``next_at``."""

    async def record_attempt(self, slot: store.Slot, tries: list[store.AttemptRow], exc: BaseException,
                             started: float, finished: float, next_at: float) -> None:
        """Journal a failed attempt and when the next may start, and announce it
        (``step_retried``)."""

    async def fail(self, slot: store.Slot, kind: str, exc: BaseException, attempt: int, started: float) -> None:
        """Journal ``slot``'s failure for good (its row of ``kind``) and announce it
        (``step_failed``)."""

    def announce(self, kind: str, label: str, attempt: int, started: float, finished: float,
                 failure: BaseException | None = None) -> None:
        """Tell the hooks, metrics and spans that the operation at ``label`` ended an
        attempt (``kind``: ``step_completed``, ``step_retried`` or ``step_failed``), once
        its journal row says so durably: a submit is a step to them, as a step is."""

    def busy(self, delta: int) -> None:
        """Count work in flight (+1/-1): a run with work in flight is never parked."""

    async def park(self, wake_at: float | None, signal: str | None) -> None:
        """Wait for a time or a signal; the run may be unwound and resumed meanwhile."""

    def register_compensation(self, slot: store.Slot, fn: Callable[..., Any], value: Any, retry: Retry,
                              timeout: float | None = None, origin: str | None = None,
                              settle: Callable[[], Awaitable[Landed | None]] | None = None) -> None:
        """Undo the operation at ``slot`` with ``fn(value)`` (or ``fn(ctx, value)``) if
        the run fails; ``origin`` names the intent undone, under which the undo's own
        submissions derive their idempotency keys.  ``settle``: for an operation cut off
        before it finished, awaited when compensating: what it ``Landed`` is undone in
        place of ``value``; None from it means there is nothing to undo."""
