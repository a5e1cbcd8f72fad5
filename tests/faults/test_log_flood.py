"""While the database or the RPC node is unreachable, a worker's retry loops log one
traceback per kind of failure, then at most one summary line per interval, and one
line when the loop recovers: not a traceback per poll (~5 a second before)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account
from sqlalchemy.engine import make_url

import chainflow as cf
from adapters.evm import EvmChain, LocalSigner
from chainflow.lograte import FailureLog
from devnet import InProcessEVM
from tests.engine._util import running_worker, wait_until

from ._gate import Gate

pytestmark = pytest.mark.timeout(60)


def records(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


def tracebacks(caplog: pytest.LogCaptureFixture, logger: str) -> int:
    return sum(1 for r in records(caplog, logger) if r.exc_info)


@pytest.fixture
def evm() -> Iterator[InProcessEVM]:
    with InProcessEVM() as net:
        yield net


async def test_database_outage_logs_one_traceback_then_recovers(pg_url: str,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    url = make_url(pg_url)
    with Gate((url.host or "127.0.0.1", url.port or 5432)) as gate:
        app = cf.Chainflow(url.set(host="127.0.0.1", port=gate.port).render_as_string(hide_password=False))
        try:
            caplog.set_level(logging.INFO, logger="chainflow")
            # the schema first: creating it (nine migrations through the gate) can take longer
            # than the worker's first claims, and a database gone at startup is a startup error
            await asyncio.to_thread(app.ensure_schema)
            async with running_worker(app, poll_interval=0.05, track=False):
                await asyncio.sleep(0.3)  # claiming works
                gate.shut()
                await asyncio.sleep(3.0)  # ~60 failed claims
                down = records(caplog, "chainflow.worker")
                assert sum(1 for r in down if r.exc_info) == 1, [r.getMessage() for r in down]
                assert 1 <= len(down) <= 3, [r.getMessage() for r in down]
                gate.open()
                await wait_until(lambda: "claiming runs recovered" in caplog.text, 10, "a recovery line")
        finally:
            app.engine.dispose()
    assert tracebacks(caplog, "chainflow.worker") == 1


async def test_rpc_outage_logs_one_traceback_then_recovers(evm: InProcessEVM, tmp_path: Any,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    port = int(evm.rpc_url.rsplit(":", 1)[1])
    gate = Gate(("127.0.0.1", port))  # shut: the node is unreachable from the start
    chain = EvmChain("dev", f"http://127.0.0.1:{gate.port}", LocalSigner.from_key(Account.create().key), timeout=2)
    app = cf.Chainflow(f"sqlite:///{tmp_path / 'cf.db'}", chains=[chain],
                       tracker=cf.TrackerConfig(poll_interval=0.05))
    caplog.set_level(logging.INFO, logger="chainflow")
    try:
        async with running_worker(app, poll_interval=0.05):
            await asyncio.sleep(3.0)  # ~60 failed tracker iterations
            down = records(caplog, "chainflow.tracker")
            assert sum(1 for r in down if r.exc_info) == 1, [r.getMessage() for r in down]
            assert 1 <= len(down) <= 3, [r.getMessage() for r in down]
            gate.open()
            await wait_until(lambda: "tracker for dev recovered" in caplog.text, 10, "a recovery line")
    finally:
        gate.shut()
        app.engine.dispose()
    assert tracebacks(caplog, "chainflow.tracker") == 1


def test_summaries_are_rate_limited_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    failures = FailureLog(logging.getLogger("chainflow.test"), "polling", interval=30, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="chainflow.test")
    for i in range(100):  # one failure a second for 100 s
        now[0] = float(i)
        failures.failed(ConnectionRefusedError(f"refused #{i}"))
    failures.failed(TimeoutError("slow"))  # another kind: its own first traceback
    now[0] = 100.0
    failures.recovered()
    failures.recovered()  # nothing more to say
    lines = [r.getMessage() for r in caplog.records]
    assert [bool(r.exc_info) for r in caplog.records] == [True, False, False, False, True, False], lines
    assert "polling failed: refused #0" in lines[0]
    assert "31 ConnectionRefusedError failure(s) over 30s (30 since the last line), latest: refused #30" in lines[1]
    assert "latest: refused #90" in lines[3]
    assert lines[5] == "polling recovered after 101 failure(s) over 100.0s"
