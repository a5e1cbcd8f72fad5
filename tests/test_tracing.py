"""OpenTelemetry spans from real runs (``chainflow.tracing``), collected by the SDK's
in-memory exporter: a span per run execution, a child span per step with its attempts
and outcome, a failed step's error."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from opentelemetry.sdk.trace import ReadableSpan  # the test extra installs the SDK (and the otel extra)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import chainflow as cf
from chainflow import tracing
from chainflow.testing import WorkflowTester


def traced_app(url: str) -> cf.Chainflow:
    # the real clock: a 1 ms backoff is waited out in the execution, not parked
    app = cf.Chainflow(url, default_retry=cf.Retry(max_attempts=3, initial=0.001, jitter=0))
    tries: list[str] = []

    def quote() -> int:
        tries.append("quote")
        if len(tries) == 1:
            raise ConnectionError("node timed out")
        return 100

    def credit(amount: int) -> int:
        if amount < 0:
            raise ValueError("ledger refused the credit")
        return amount

    @app.workflow("traced")
    async def traced(ctx: cf.Context, sign: int) -> int:
        amount = await ctx.step("quote", quote)
        return await ctx.step("credit", credit, sign * amount, retry=cf.Retry(max_attempts=1))

    return app


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    """``span.attributes``: typed Optional, but the SDK's ReadableSpan always returns a mapping."""
    return cast("Mapping[str, Any]", span.attributes)


def by_name(exporter: InMemorySpanExporter, run_id: str) -> dict[str, Any]:
    return {s.name: s for s in exporter.get_finished_spans() if attrs(s)["chainflow.run_id"] == run_id}


def test_a_run_with_a_retried_step_gives_a_run_span_and_step_spans(tmp_path: Path,
                                                                   exporter: InMemorySpanExporter) -> None:
    app = traced_app(f"sqlite:///{tmp_path}/t.db")

    async def scenario() -> tuple[str, str]:
        worker = app.worker()  # waits out a 1 ms backoff inside the execution (WorkflowTester parks)
        await worker.start()
        try:
            ids = (await app.astart("traced", 1)).id, (await app.astart("traced", -1)).id
            await worker.drain()
        finally:
            await worker.close()
        return ids

    ok, bad = asyncio.run(scenario())
    assert app.status(ok).status == "completed" and app.status(bad).status == "failed"
    app.engine.dispose()

    spans = by_name(exporter, ok)
    assert set(spans) == {"run traced", "step quote", "step credit"}
    run, quote, credit = spans["run traced"], spans["step quote"], spans["step credit"]
    assert run.attributes["chainflow.workflow"] == "traced"
    assert run.attributes["chainflow.run.status"] == "completed"
    assert run.status.status_code != StatusCode.ERROR
    for step in (quote, credit):  # children of the run's span, inside it
        assert step.parent is not None and step.parent.span_id == run.context.span_id
        assert step.context.trace_id == run.context.trace_id
        assert run.start_time <= step.start_time <= step.end_time <= run.end_time
    assert quote.attributes["chainflow.step"] == "quote"
    assert quote.attributes["chainflow.step.attempts"] == 2 and quote.attributes["chainflow.step.outcome"] == "ok"
    [failed_attempt] = quote.events
    assert failed_attempt.name == "attempt failed"
    assert failed_attempt.attributes == {"attempt": 1, "error": "ConnectionError: node timed out"}
    assert credit.attributes["chainflow.step.attempts"] == 1 and not credit.events
    assert quote.end_time <= credit.start_time

    spans = by_name(exporter, bad)
    run, credit = spans["run traced"], spans["step credit"]
    assert credit.attributes["chainflow.step.outcome"] == "failed"
    assert credit.status.status_code == StatusCode.ERROR
    assert credit.status.description == "ValueError: ledger refused the credit"
    assert run.attributes["chainflow.run.status"] == "failed" and run.status.status_code == StatusCode.ERROR
    assert "ledger refused the credit" in run.attributes["chainflow.run.error"]
    assert not tracing._spans.runs and not tracing._spans.steps  # nothing left open


def test_a_parked_run_has_a_span_per_execution(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    app = cf.Chainflow(f"sqlite:///{tmp_path}/p.db", clock=cf.FakeClock())

    @app.workflow("traced_waits")
    async def traced_waits(ctx: cf.Context, _: Any) -> Any:
        return await ctx.wait_for("go")

    tester = WorkflowTester(app)

    async def scenario() -> str:
        run_id = (await app.astart("traced_waits", None)).id
        await tester.run_until_idle()
        await app.asignal(run_id, "go", 7)
        await tester.run_until_idle()
        return run_id

    run_id = asyncio.run(scenario())
    app.engine.dispose()
    runs = [s for s in exporter.get_finished_spans() if attrs(s)["chainflow.run_id"] == run_id]
    assert [attrs(s)["chainflow.run.status"] for s in runs] == ["waiting", "completed"]
    first_end, second_start = runs[0].end_time, runs[1].start_time
    assert first_end is not None and second_start is not None  # finished spans have both
    assert first_end <= second_start


_GLOBAL_PROVIDER_SCRIPT = """
import asyncio, sys, time
from opentelemetry import trace
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import chainflow as cf
from chainflow import tracing

app = cf.Chainflow(f"sqlite:///{sys.argv[1]}/g.db")

@app.workflow("plain")
async def plain(ctx, n):
    return await ctx.step("one", lambda: n)

async def one_run():
    worker = app.worker()
    await worker.start()
    try:
        run_id = (await app.astart("plain", 1)).id
        await worker.drain()
    finally:
        await worker.close()
    return run_id

before = asyncio.run(one_run())
time.sleep(tracing._LOOK_EVERY)  # the global provider is looked up at most this often
assert not tracing.active("step_completed")  # the API's proxy: nothing to trace to
exporter = InMemorySpanExporter()
provider = sdk_trace.TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # the application's, after the app started working
after = asyncio.run(one_run())
names = sorted((s.attributes["chainflow.run_id"] == after, s.name) for s in exporter.get_finished_spans())
assert names == [(True, "run plain"), (True, "step one")], names
print("ok")
"""


def test_a_global_provider_installed_later_is_traced_from_the_next_execution(tmp_path: Path) -> None:
    # the API takes a global provider once per process: a child process of its own
    done = subprocess.run([sys.executable, "-c", _GLOBAL_PROVIDER_SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
