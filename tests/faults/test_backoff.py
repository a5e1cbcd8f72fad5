"""Durable backoff: attempt numbers and delays come from the journal (cf_attempts), so
a retry policy holds across parks, replays and worker restarts; a node that answers
HTTP 4xx fails the step after a few tries instead of being retried for ever."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from eth_account import Account

import chainflow as cf
from adapters.evm import EvmChain, LocalSigner
from tests.engine._util import claim_count, running_worker, wait_status

from ._httpstub import HttpStub, closed_port

pytestmark = pytest.mark.timeout(60)

TX = {"to": "0x" + "11" * 20, "value": 1, "gas": 21_000}  # gas given: no estimate, first RPC is the nonce


def dead_chain(url: str) -> EvmChain:
    return EvmChain("dev", url, LocalSigner.from_key(Account.create().key), chain_id=1, timeout=2)


async def run_until(app: cf.Chainflow, run_id: str, done: Any, timeout: float, **worker: Any) -> None:
    """Work ``run_id`` until it ends or ``done()`` holds (old code retries for ever)."""
    end = time.monotonic() + timeout
    async with running_worker(app, track=False, **worker):
        while time.monotonic() < end and not done() and not (await app.astatus(run_id)).done:
            await asyncio.sleep(0.05)


async def test_submission_backoff_follows_policy_across_parks(make_app: Any) -> None:
    """Node down (closed port): attempts 1, 2, 3, 4 with delays 0.2, 0.4, 0.8, 1.6,
    each one parking the run (delay over the worker's inline wait), then failure."""
    app = make_app(chains=[dead_chain(f"http://127.0.0.1:{closed_port()}")])
    policy = cf.Retry(max_attempts=5, backoff="exponential", initial=0.2, multiplier=2.0, jitter=0)

    @app.workflow("pay")
    async def pay(ctx: cf.Context, _: Any) -> Any:
        return await ctx.submit("pay", chain="dev", tx=TX, idempotency_key="k1", retry=policy)

    run = await app.astart("pay", None)
    await run_until(app, run.id, lambda: len(app.attempts(run.id)) >= 6, 12, inline_wait=0.05)

    tries = app.attempts(run.id)
    assert [a.attempt for a in tries] == [1, 2, 3, 4]
    assert [round(a.next_at - a.finished_at, 6) for a in tries] == [0.2, 0.4, 0.8, 1.6]
    for before, after in zip(tries, tries[1:]):
        assert after.started_at >= before.next_at, "a retry started before its journaled delay"
    # the run parked (and was claimed again) between every two attempts
    assert claim_count(app, run.id) >= 5
    st = await wait_status(app, run.id, timeout=1)
    assert st.status == "failed", st
    assert "gave up after 5 attempt(s)" in st.error["message"]  # type: ignore[index]
    (entry,) = app.journal(run.id)
    assert (entry.kind, entry.status, entry.attempts) == ("submit", "error", 5)


async def test_step_backoff_survives_worker_restart(make_app: Any, calls: Any) -> None:
    """A plain ctx.step whose backoff parks keeps its attempt numbers when another
    worker (another app, as another process would have) picks the run up."""
    policy = cf.Retry(max_attempts=4, backoff="exponential", initial=0.3, multiplier=2.0, jitter=0)

    def register(app: cf.Chainflow) -> None:
        def flaky() -> None:
            calls.hit("flaky")
            raise ConnectionError(f"down ({calls.count('flaky')})")

        @app.workflow("wf")
        async def wf(ctx: cf.Context, _: Any) -> None:
            await ctx.step("flaky", flaky, retry=policy)

    first, second = make_app(), make_app()
    register(first)
    register(second)
    run = await first.astart("wf", None)
    await run_until(first, run.id, lambda: len(first.attempts(run.id)) >= 2, 10, inline_wait=0.0)
    assert [a.attempt for a in first.attempts(run.id)] == [1, 2]
    await run_until(second, run.id, lambda: False, 10, inline_wait=0.0)

    st = await wait_status(second, run.id, timeout=1)
    assert st.status == "failed"
    tries = second.attempts(run.id)
    assert [a.attempt for a in tries] == [1, 2, 3]
    assert [round(a.next_at - a.finished_at, 6) for a in tries] == [0.3, 0.6, 1.2]
    assert [a.error["message"] for a in tries] == ["down (1)", "down (2)", "down (3)"]  # type: ignore[index]
    (entry,) = second.journal(run.id)
    assert (entry.status, entry.attempts) == ("error", 4)
    assert calls.count("flaky") == 4


async def test_http_404_fails_the_step_after_a_few_tries(make_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A wrong RPC path is a configuration error: a few tries, then a failed step whose
    message names the status and the URL without its secrets."""
    caplog.set_level(logging.INFO)
    node = await HttpStub(status=404, reason="Not Found", body=b"no such path").start()
    try:
        port = node.url.rsplit(":", 1)[1]
        url = f"http://alice:s3cret@127.0.0.1:{port}/v3/KEY123abc?apikey=QUERY456"
        app = make_app(chains=[dead_chain(url)])
        patient = cf.Retry(max_attempts=20, backoff="exponential", initial=0.1, jitter=0)

        @app.workflow("pay")
        async def pay(ctx: cf.Context, _: Any) -> Any:
            return await ctx.submit("pay", chain="dev", tx=TX, idempotency_key="k1", retry=patient)

        run = await app.astart("pay", None)
        await run_until(app, run.id, lambda: len(node.requests) > 5, 10, inline_wait=0.05)
    finally:
        await node.stop()

    st = await app.astatus(run.id)
    assert st.status == "failed", st
    assert len(node.requests) == 3, node.requests
    message = st.error["message"]  # type: ignore[index]
    assert "HTTP 404" in message and f"http://127.0.0.1:{port}/…" in message, message
    assert [a.attempt for a in app.attempts(run.id)] == [1, 2]
    seen = message + "".join(str(a.error) for a in app.attempts(run.id)) + caplog.text
    for secret in ("alice", "s3cret", "KEY123abc", "QUERY456"):
        assert secret not in seen
