"""OpenTelemetry spans for runs and steps, built from the lifecycle events
(``chainflow.events``) when ``opentelemetry-api`` is installed (the ``otel`` extra);
without it every call here returns at once.

The engine emits events after the fact (a step's event carries its duration), so a
span is opened when its start is known and backdated where it is not:

* a run span per *execution* -- from ``run_executing`` (a worker starts running a
  claimed or locally started run) to the event that ends that execution: the run
  finished, parked (``run_suspended``), was rolled back or was left
  (``run_abandoned``).  A run that parks and resumes, maybe on another worker, has one
  span per execution, each with the same ``chainflow.run_id``: the process that resumes
  it knows nothing of the spans of the one before.
* a step span per step and execution, child of the run's span: opened by its first
  failed attempt (``step_retried``, backdated by that attempt's duration) or, for a
  step that succeeds or fails at its first attempt here, backdated at its end; each
  failed attempt is a span event; the step's end sets ``chainflow.step.attempts`` and
  ``chainflow.step.outcome``.  A step still retrying when its run parks (a long
  backoff) ends with the run's span, outcome ``unfinished``.

Spans go to the global tracer provider the application configures, or to the one
given to ``configure`` (tests, or an application that keeps its own).  Until there is
one, ``active`` says no and the events skip tracing: the API's default provider is a
proxy with nothing behind it, and opening a span there per step would cost every step
a few microseconds for nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

try:
    from opentelemetry import trace
except ImportError:  # the otel extra is not installed: no spans
    trace = None  # type: ignore[assignment]



class Event(Protocol):
    """What a span reads of ``chainflow.events.Event`` (not imported: events imports us)."""

    @property
    def kind(self) -> str: ...
    @property
    def run_id(self) -> str | None: ...
    @property
    def workflow(self) -> str | None: ...
    @property
    def step(self) -> str | None: ...
    @property
    def status(self) -> str | None: ...
    @property
    def attempt(self) -> int | None: ...
    @property
    def duration(self) -> float | None: ...
    @property
    def error(self) -> str | None: ...

# events that end a run's execution in this process
_RUN_ENDS = frozenset({"run_completed", "run_failed", "run_cancelled", "run_dead_lettered", "run_suspended",
                       "run_rolled_back", "run_abandoned"})
_STEP_ENDS = {"step_completed": "ok", "step_failed": "failed"}


class _Spans:
    """The spans open in this process, by run id and (run id, step)."""

    def __init__(self) -> None:
        self.tracer: Any = None
        self.provider: Any = None  # the one given to ``configure``; None: the global one
        self.live = False  # spans go to a real provider (``active``)
        self.next_look = 0.0  # monotonic time ``active`` may look up the global provider again
        self.runs: dict[str, Any] = {}
        self.steps: dict[tuple[str, str], Any] = {}
        self.lock = threading.Lock()  # several workers (threads) may share one process


_spans = _Spans()
_LOOK_EVERY = 1.0  # seconds between two lookups of the global provider while there is none


def configure(tracer_provider: Any = None) -> None:
    """Trace to ``tracer_provider`` (an ``opentelemetry.trace.TracerProvider``);
    None: to the global provider again."""
    if trace is not None:
        _spans.tracer = trace.get_tracer("chainflow", tracer_provider=tracer_provider)
        _spans.provider, _spans.next_look = tracer_provider, 0.0
        _spans.live = _real(tracer_provider if tracer_provider is not None else trace.get_tracer_provider())


def active(kind: str) -> bool:
    """Whether an event of ``kind`` is traced: a provider was given to ``configure``,
    or the application installed a global one (in code or by
    ``OTEL_PYTHON_TRACER_PROVIDER``).  While the answer is no, the global provider is
    looked up again only when a run's execution starts, at most once a second, so an
    event costs an attribute read rather than the API's environment lookup: a provider
    the application installs later is traced to from an execution start a second later
    at the most.  A yes is kept (the API never takes a global provider back)."""
    if not _spans.live and kind == "run_executing" and trace is not None:
        now = time.monotonic()
        if now >= _spans.next_look:
            _spans.next_look = now + _LOOK_EVERY
            _spans.live = _real(_spans.provider if _spans.provider is not None else trace.get_tracer_provider())
    return _spans.live


def _real(provider: Any) -> bool:
    """Not the API's stand-in (the proxy before any provider is set, or the no-op)."""
    assert trace is not None
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def record(event: Event) -> None:
    """Open, annotate or end the spans ``event`` concerns (called by ``Events.emit``
    when ``active``)."""
    if trace is None or event.run_id is None:
        return
    kind = event.kind
    if kind == "run_executing":
        _start_run(event)
    elif kind == "step_retried":
        _retried(event)
    elif kind in _STEP_ENDS:
        _end_step(event, _STEP_ENDS[kind])
    elif kind in _RUN_ENDS:
        _end_run(event)


def _tracer() -> Any:
    if _spans.tracer is None:
        configure()
    return _spans.tracer


def _now_and_start(event: Event) -> tuple[int, int]:
    """(now, now minus the event's duration) in epoch nanoseconds: the span's clock is
    the wall clock, whatever clock the app injects."""
    now = time.time_ns()
    return now, now - int(max(event.duration or 0.0, 0.0) * 1e9)


def _start_run(e: Event) -> None:
    assert trace is not None and e.run_id is not None
    span = _tracer().start_span(f"run {e.workflow}", kind=trace.SpanKind.INTERNAL, attributes={
        "chainflow.run_id": e.run_id, "chainflow.workflow": e.workflow or "", "chainflow.run.claims": e.attempt or 0})
    with _spans.lock:
        stale = _spans.runs.pop(e.run_id, None)  # an execution of it whose end this process never heard
        _spans.runs[e.run_id] = span
    if stale is not None:
        stale.set_attribute("chainflow.run.status", "unknown")
        stale.end()


def _step_span(e: Event, start: int) -> Any:
    """The open span of ``e``'s step, or a new one starting at ``start``."""
    assert trace is not None and e.run_id is not None and e.step is not None
    key = (e.run_id, e.step)
    with _spans.lock:
        span = _spans.steps.get(key)
        parent = _spans.runs.get(e.run_id)
    if span is not None:
        return span
    context = trace.set_span_in_context(parent) if parent is not None else None
    span = _tracer().start_span(f"step {e.step}", context=context, start_time=start, attributes={
        "chainflow.run_id": e.run_id, "chainflow.workflow": e.workflow or "", "chainflow.step": e.step})
    with _spans.lock:
        _spans.steps[key] = span
    return span


def _retried(e: Event) -> None:
    if e.step is None:
        return
    now, start = _now_and_start(e)
    _step_span(e, start).add_event("attempt failed", {"attempt": e.attempt or 0, "error": e.error or ""},
                                   timestamp=now)


def _end_step(e: Event, outcome: str) -> None:
    assert trace is not None and e.run_id is not None
    if e.step is None:
        return
    now, start = _now_and_start(e)
    span = _step_span(e, start)
    with _spans.lock:
        _spans.steps.pop((e.run_id, e.step), None)
    span.set_attributes({"chainflow.step.attempts": e.attempt or 1, "chainflow.step.outcome": outcome})
    if outcome == "failed":
        span.set_status(trace.Status(trace.StatusCode.ERROR, e.error))
    span.end(end_time=now)


def _end_run(e: Event) -> None:
    assert trace is not None and e.run_id is not None
    with _spans.lock:
        span = _spans.runs.pop(e.run_id, None)
        steps = [k for k in _spans.steps if k[0] == e.run_id]
        open_steps = [_spans.steps.pop(k) for k in steps]
    for step in open_steps:  # retrying across a park: its next attempts belong to a later execution
        step.set_attribute("chainflow.step.outcome", "unfinished")
        step.end()
    if span is None:  # ended without this process having seen it start (e.g. dead-lettered at claim)
        return
    span.set_attribute("chainflow.run.status", str(e.status or e.kind.removeprefix("run_")))
    if e.error is not None:
        span.set_attribute("chainflow.run.error", e.error)
        if e.kind in ("run_failed", "run_dead_lettered"):
            span.set_status(trace.Status(trace.StatusCode.ERROR, e.error))
    span.end()
