"""Lifecycle events: one record per state change a human or an alert cares about, fanned
out to the Prometheus series (``metrics.observe``), OpenTelemetry spans
(``tracing.record``), one log line on the ``chainflow.events`` logger, and the app's
hooks (``Chainflow.on``).

The engine emits at the points where the state change is already durable (a step's
journal row committed, a run's final row written, a reorg recorded), so a hook never
hears of something the database would later deny.  An ``Event`` carries identifiers
and outcomes only -- run id, workflow, step, chain, transaction hash, status, a short
error -- never a transaction request or anything a signer holds.

Hooks are for alerting: they run on the emitting worker's event loop (an ``async``
hook is scheduled as a task of its own), so a slow sync hook stalls that worker; a
hook that raises is logged (rate-limited) and never disturbs the run it heard about.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import metrics, tracing
from .lograte import FailureLog

log = logging.getLogger("chainflow.events")

# kind -> level of its log line: what happens on every step stays at DEBUG (one line a
# step would flood a busy worker's log), what ends a run or needs a human is louder
LEVELS: dict[str, int] = {
    "run_started": logging.INFO,
    "run_claimed": logging.INFO,
    "run_executing": logging.DEBUG,
    "run_suspended": logging.DEBUG,
    "run_completed": logging.INFO,
    "run_failed": logging.WARNING,
    "run_cancelled": logging.INFO,
    "run_dead_lettered": logging.ERROR,
    "run_compensated": logging.WARNING,
    "run_rolled_back": logging.WARNING,
    "run_abandoned": logging.DEBUG,
    "step_completed": logging.DEBUG,
    "step_retried": logging.INFO,
    "step_failed": logging.WARNING,
    "reorg_detected": logging.WARNING,
    "submission_stuck": logging.WARNING,
    "chain_stalled": logging.ERROR,
    "chain_resumed": logging.WARNING,
}
# a run's ending, whatever it was (``Chainflow.on("run_finished")``)
FINISHED = ("run_completed", "run_failed", "run_cancelled", "run_dead_lettered")
ALIASES = {"run_finished": FINISHED}


@dataclass(frozen=True)
class Event:
    kind: str  # one of LEVELS
    run_id: str | None = None
    workflow: str | None = None
    step: str | None = None
    chain: str | None = None
    tx_hash: str | None = None
    status: str | None = None
    attempt: int | None = None
    duration: float | None = None  # seconds: of the run, the step attempt, or a chain's stall
    depth: int | None = None  # blocks: a reorg's
    error: str | None = None  # "Type: message", one line

    def fields(self) -> dict[str, Any]:
        """The fields that are set (what a JSON log line carries)."""
        return {k: v for k, v in vars(self).items() if v is not None}

    def line(self) -> str:
        """``kind k=v k=v``: the text log line."""
        rest = " ".join(f"{k}={v}" for k, v in self.fields().items() if k != "kind")
        return f"{self.kind} {rest}" if rest else self.kind


Hook = Callable[[Event], Any]


class Events:
    """One per app: its hooks, and the place the engine reports state changes to."""

    def __init__(self) -> None:
        self._hooks: dict[str, list[Hook]] = {}
        self._failures = FailureLog(log, "a lifecycle hook")
        self._tasks: set[asyncio.Task[Any]] = set()

    def on(self, kind: str) -> Callable[[Hook], Hook]:
        """Decorator: call ``fn(event)`` for each event of ``kind`` (``run_finished``
        means any of ``FINISHED``).  An unknown kind is refused here, at import, not
        silently never called."""
        kinds = ALIASES.get(kind, (kind,))
        if kind not in LEVELS and kind not in ALIASES:
            raise ValueError(f"unknown event {kind!r}; chainflow emits: {', '.join([*ALIASES, *LEVELS])}")

        def register(fn: Hook) -> Hook:
            if not callable(fn):
                raise TypeError(f"hook for {kind!r} must be callable, got {fn!r}")
            for k in kinds:
                self._hooks.setdefault(k, []).append(fn)
            return fn

        return register

    def emit(self, kind: str, **fields: Any) -> None:
        """Count the state change; build its ``Event`` for the span, the log line and the
        hooks only when one of them listens (on a worker nobody configured, a step's
        event is its counters and nothing more)."""
        _count(kind, fields)
        level = LEVELS[kind]
        hooks = self._hooks.get(kind, ())
        logged = log.isEnabledFor(level)
        traced = tracing.active(kind)
        if not (hooks or logged or traced):
            return
        event = Event(kind, **fields)
        if traced:
            tracing.record(event)
        if logged:
            log.log(level, "%s", event.line(), extra={"event": event.fields()})
        for hook in hooks:
            self._call(hook, event)

    def _call(self, hook: Hook, event: Event) -> None:
        try:
            result = hook(event)
            if inspect.isawaitable(result):
                try:
                    asyncio.get_running_loop()
                except RuntimeError:  # a client call in plain sync code: no loop to share
                    asyncio.run(_awaited(result))
                    return
                task = asyncio.ensure_future(result)
                self._tasks.add(task)
                task.add_done_callback(self._settled)
        except Exception as exc:  # an alerting bug must not fail the run it reports on
            self._failures.failed(exc, f"for {event.kind} raised")

    def _settled(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self._failures.failed(exc, "raised")


_ATTEMPTS = {"step_completed": "ok", "step_retried": "retried", "step_failed": "failed"}


class _Series(NamedTuple):
    """The labelled children the event of a step attempt or a run's end moves, bound
    once per (kind, workflow, status): these events come with every step and run, where
    building the label tuples again each time cost as much as the counting itself."""

    total: Callable[[float], None]  # attempts, or finished runs
    durations: Callable[[float], None]
    failures: Callable[[float], None] | None  # a step that failed for good


_series_of: dict[tuple[str, Any, Any], _Series] = {}


def _series(kind: str, workflow: Any, status: Any) -> _Series:
    series = _series_of.get((kind, workflow, status))
    if series is None:
        if kind in _ATTEMPTS:
            labels = {"workflow": workflow, "outcome": _ATTEMPTS[kind]}
            series = _Series(metrics.child("chainflow_step_attempts_total", **labels),
                             metrics.child("chainflow_step_duration_seconds", **labels),
                             metrics.child("chainflow_step_failures_total", workflow=workflow)
                             if kind == "step_failed" else None)
        else:
            labels = {"workflow": workflow, "status": status}
            series = _Series(metrics.child("chainflow_runs_finished_total", **labels),
                             metrics.child("chainflow_run_duration_seconds", **labels), None)
        _series_of[kind, workflow, status] = series
    return series


def _count(kind: str, fields: dict[str, Any]) -> None:
    """The Prometheus series one event (``kind`` with the ``Event`` fields given) moves."""
    get = fields.get
    if kind in _ATTEMPTS or kind in FINISHED:
        series, duration = _series(kind, get("workflow"), get("status")), get("duration")
        series.total(1)
        if duration is not None:
            series.durations(duration)
        if series.failures is not None:
            series.failures(1)
    elif kind == "run_started":
        metrics.inc("chainflow_runs_started_total", workflow=get("workflow"))
    elif kind == "run_compensated":
        metrics.inc("chainflow_runs_compensated_total", workflow=get("workflow"))
    elif kind == "reorg_detected":
        metrics.inc("chainflow_reorgs_total", chain=get("chain"))
        metrics.observe("chainflow_reorg_depth_blocks", get("depth") or 0, chain=get("chain"))
    elif kind == "submission_stuck":
        metrics.inc("chainflow_submissions_stuck_total", chain=get("chain"))
    elif kind in ("chain_stalled", "chain_resumed"):
        metrics.set_gauge("chainflow_chain_stalled", 1 if kind == "chain_stalled" else 0, chain=get("chain"))


async def _awaited(result: Awaitable[Any]) -> Any:
    return await result
