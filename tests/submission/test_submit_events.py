"""A ``ctx.submit`` is a step to the lifecycle events and what is built from them
(docs/operations.md: hooks, metrics, tracing): its end fires ``step_completed`` or
``step_failed`` -- its duration from its intent's opening to its finality --, a node
failure retried by its policy fires ``step_retried``, and a replay of a journaled
submit fires nothing.  On the in-process EVM, on both backends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from web3 import Web3

import chainflow as cf
from adapters.evm import EvmChain, LocalSigner
from chainflow.metrics import REGISTRY
from devnet import InProcessEVM, deploy_token, token_contract
from tests.engine._util import running_worker, wait_until
from tests.faults.tcp_proxy import UP, Link, TcpProxy

pytestmark = pytest.mark.timeout(120)

PAYEE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
STEP_EVENTS = ("step_completed", "step_retried", "step_failed")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def net() -> Iterator[InProcessEVM]:
    with InProcessEVM(block_time=0.1) as node:
        yield node


def workflow_name() -> str:
    return f"pay-{uuid.uuid4().hex[:8]}"  # the registry is per process: this test's series only


def on_chain(db_url: str, net: InProcessEVM, rpc: str | None = None) -> tuple[cf.Chainflow, list[cf.Event]]:
    """An app paying from the node's first account (through ``rpc`` if given), and the
    step events its hooks hear."""
    signer = LocalSigner.from_key(net.accounts()[0].private_key)
    app = cf.Chainflow(db_url, chains=[EvmChain("local", rpc=rpc or net.rpc_url, signer=signer)],
                       tracker=cf.TrackerConfig(poll_interval=0.05))
    heard: list[cf.Event] = []
    for kind in STEP_EVENTS:
        app.on(kind)(heard.append)
    return app, heard


def work(app: cf.Chainflow, scenario: Callable[[], Awaitable[Any]]) -> Any:
    async def worked() -> Any:
        app.ensure_schema()
        async with running_worker(app):
            return await scenario()

    try:
        return asyncio.run(worked())
    finally:
        for chain in app.chains.values():
            asyncio.run(chain.aclose())
        app.engine.dispose()


def of_run(heard: list[cf.Event], run_id: str) -> list[tuple[str, str | None, int | None]]:
    return [(e.kind, e.step, e.attempt) for e in heard if e.run_id == run_id]


def test_a_submit_ends_as_a_step_for_hooks_metrics_and_spans(db_url: str, net: InProcessEVM,
                                                             exporter: InMemorySpanExporter) -> None:
    """Three submits: one final after two confirmations, one refused (deeper than the
    tracker's window), one whose contract call reverts."""
    workflow = workflow_name()
    w3 = Web3(Web3.HTTPProvider(net.rpc_url))
    token = token_contract(w3, deploy_token(w3, net.accounts()[0].private_key, max_mint=1000))
    app, heard = on_chain(db_url, net)

    @app.workflow(workflow)
    async def pay(ctx: cf.Context, case: str) -> Any:
        tx: Any = token.functions.mint(PAYEE, 10**6) if case == "reverts" else {"to": PAYEE, "value": 1}
        finality = cf.Confirmations(10_000 if case == "too-deep" else 2)
        r = await ctx.submit("send", chain="local", tx=tx, idempotency_key=f"{workflow}:{case}", finality=finality)
        return r.tx_hash

    async def scenario() -> list[cf.RunStatus]:
        runs = [await app.astart(workflow, case) for case in ("ok", "too-deep", "reverts")]
        return [await app.await_run(r.id, timeout=60) for r in runs]

    done, refused, reverted = work(app, scenario)
    assert done.status == cf.RunState.COMPLETED, done.error
    assert refused.status == reverted.status == cf.RunState.FAILED

    assert of_run(heard, done.id) == [("step_completed", "send", 1)]
    (completed,) = [e for e in heard if e.run_id == done.id]
    (entry,) = app.journal(done.id)
    assert entry.started_at is not None and entry.finished_at is not None
    # the journal row's span: from the intent's opening to its finality (two blocks of 0.1 s)
    assert completed.workflow == workflow and completed.error is None
    assert completed.duration == pytest.approx(entry.finished_at - entry.started_at)
    assert completed.duration is not None and completed.duration >= 0.1
    for run, error in ((refused, "ConfigurationError: finality of submit 'send' is Confirmations(10000)"),
                       (reverted, "TxRevertedError: ")):
        assert of_run(heard, run.id) == [("step_failed", "send", 1)]
        (failed,) = [e for e in heard if e.run_id == run.id]
        assert failed.workflow == workflow and failed.error is not None and failed.error.startswith(error), failed
        assert failed.duration is not None and failed.duration >= 0

    assert sample("chainflow_step_attempts_total", workflow=workflow, outcome="ok") == 1
    assert sample("chainflow_step_duration_seconds_count", workflow=workflow, outcome="ok") == 1
    assert sample("chainflow_step_duration_seconds_sum", workflow=workflow, outcome="ok") == \
        pytest.approx(completed.duration)
    assert sample("chainflow_step_attempts_total", workflow=workflow, outcome="failed") == 2
    assert sample("chainflow_step_failures_total", workflow=workflow) == 2
    assert sample("chainflow_step_attempts_total", workflow=workflow, outcome="retried") == 0

    spans = [s for s in exporter.get_finished_spans() if s.attributes and s.attributes.get("chainflow.step")]
    by_run = {s.attributes["chainflow.run_id"]: s for s in spans if s.attributes}
    assert len(spans) == 3 and set(by_run) == {done.id, refused.id, reverted.id}
    ok_span, refused_span = by_run[done.id], by_run[refused.id]
    assert ok_span.name == "step send" and ok_span.attributes is not None
    assert ok_span.attributes["chainflow.step.outcome"] == "ok" and ok_span.attributes["chainflow.step.attempts"] == 1
    assert ok_span.status.status_code != StatusCode.ERROR
    assert refused_span.attributes is not None and refused_span.attributes["chainflow.step.outcome"] == "failed"
    assert refused_span.status.status_code == StatusCode.ERROR
    assert "Confirmations(10000)" in (refused_span.status.description or "")
    assert refused_span.parent is not None  # a child of its run's span


def test_a_retried_submit_fires_step_retried(db_url: str, net: InProcessEVM) -> None:
    """The node's connection drops while the gas estimate is asked for, four times
    (the estimate goes with the balance in a batch, which the RPC client re-sends once
    on a fresh connection by itself and then asks again call by call, the estimate
    re-sent once too): the submit's policy retries what reaches it,
    and each journaled retry is announced like a step's."""
    workflow = workflow_name()
    host, port = net.rpc_url.removeprefix("http://").rstrip("/").split(":")
    cut: list[int] = []

    def drop_first_estimate(link: Link, direction: str, chunk: bytes) -> bytes | None:
        if direction == UP and b"eth_estimateGas" in chunk and len(cut) < 4:
            cut.append(link.id)
            return None
        return chunk

    with TcpProxy(host, int(port), drop_first_estimate, lifetime=120) as proxy:
        app, heard = on_chain(db_url, net, rpc=f"http://127.0.0.1:{proxy.port}")

        @app.workflow(workflow)
        async def pay(ctx: cf.Context, _: Any) -> Any:
            r = await ctx.submit("send", chain="local", tx={"to": PAYEE, "value": 1}, idempotency_key=workflow,
                                 finality=cf.Confirmations(1), retry=cf.Retry(max_attempts=3, initial=0.01, jitter=0))
            return r.tx_hash

        async def scenario() -> cf.RunStatus:
            return await app.await_run((await app.astart(workflow, None)).id, timeout=60)

        done = work(app, scenario)
    assert len(cut) == 4, "the proxy did not see the gas estimate four times"
    assert done.status == cf.RunState.COMPLETED, done.error
    tries = app.attempts(done.id)
    assert tries, "no drop reached the submit's retry policy"
    assert of_run(heard, done.id) == [*(("step_retried", "send", a.attempt) for a in tries),
                                      ("step_completed", "send", len(tries) + 1)]
    retried = next(e for e in heard if e.kind == "step_retried")
    assert retried.error is not None and retried.workflow == workflow
    assert sample("chainflow_step_attempts_total", workflow=workflow, outcome="retried") == len(tries)
    assert sample("chainflow_step_attempts_total", workflow=workflow, outcome="ok") == 1


def test_a_journaled_submit_replays_silently(db_url: str, net: InProcessEVM) -> None:
    """The run parks on a signal after its submit; the execution that resumes it replays
    the submit from the journal and announces nothing about it again."""
    workflow = workflow_name()
    app, heard = on_chain(db_url, net)

    @app.workflow(workflow)
    async def pay(ctx: cf.Context, _: Any) -> Any:
        r = await ctx.submit("send", chain="local", tx={"to": PAYEE, "value": 1}, idempotency_key=workflow,
                             finality=cf.Confirmations(1))
        await ctx.wait_for("go")
        return await ctx.step("after", lambda: r.tx_hash)

    async def scenario() -> cf.RunStatus:
        run = await app.astart(workflow, None)
        await wait_until(lambda: app.journal(run.id) and app.journal(run.id)[0].status == "ok", 30,
                         "the submit's journal row")
        await app.asignal(run.id, "go", None)
        return await app.await_run(run.id, timeout=60)

    done = work(app, scenario)
    assert done.status == cf.RunState.COMPLETED, done.error
    assert app.attempts(done.id) == [] and len(app.journal(done.id)) == 3
    assert of_run(heard, done.id) == [("step_completed", "send", 1), ("step_completed", "after", 1)]
    assert sample("chainflow_step_duration_seconds_count", workflow=workflow, outcome="ok") == 2


def test_a_compensations_submit_is_a_step_under_the_compensation(db_url: str, net: InProcessEVM) -> None:
    """A payment undone on chain by a compensation that takes a context: the refund's
    submit is announced under the compensation's branch (``compensate:send/refund``),
    as a step of that compensation is."""
    workflow = workflow_name()
    app, heard = on_chain(db_url, net)

    async def refund(ctx: cf.Context, receipt: Any) -> str:
        r = await ctx.submit("refund", chain="local", tx={"to": PAYEE, "value": 1}, finality=cf.Confirmations(1))
        return str(r.tx_hash)

    def ledger_down() -> None:
        raise ConnectionRefusedError("ledger down")

    @app.workflow(workflow)
    async def pay(ctx: cf.Context, _: Any) -> Any:
        await ctx.submit("send", chain="local", tx={"to": PAYEE, "value": 2}, idempotency_key=workflow,
                         finality=cf.Confirmations(1), compensate=refund)
        await ctx.step("credit", ledger_down, retry=cf.Retry(max_attempts=1))

    async def scenario() -> cf.RunStatus:
        return await app.await_run((await app.astart(workflow, None)).id, timeout=60)

    failed = work(app, scenario)
    assert failed.status == cf.RunState.FAILED
    assert of_run(heard, failed.id) == [("step_completed", "send", 1), ("step_failed", "credit", 1),
                                        ("step_completed", "compensate:send/refund", 1),
                                        ("step_completed", "compensate:send", 1)]
    assert sample("chainflow_step_attempts_total", workflow=workflow, outcome="ok") == 3
