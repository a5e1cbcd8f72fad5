"""The copyable examples, each exercised: the approval transfer (approve, refuse,
time out -> compensated), the 30-day subscription on an injected clock (and cancelled
mid-sleep), the web service starting runs with the request's idempotency key; and the
compose file that runs them."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest
import yaml
from starlette.testclient import TestClient

import chainflow as cf
from chainflow.testing import WorkflowTester
from examples import approval, subscription
from examples.ledger import Ledger
from examples.webservice import create_web

if TYPE_CHECKING:
    from web3.types import TxData

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    book = Ledger(tmp_path / "ledger.db")
    book.post("acme", "opening", 1_000)
    return book


def approval_app(tmp_path: Path, ledger: Ledger) -> tuple[cf.Chainflow, WorkflowTester]:
    app = approval.build(f"sqlite:///{tmp_path}/a.db", ledger, clock=cf.FakeClock())
    return app, WorkflowTester(app)


def transfer(i: str, amount: int = 300) -> dict[str, Any]:
    return {"id": i, "from": "acme", "to": "bob", "amount": amount}


def test_approved_transfer_pays_once(tmp_path: Path, ledger: Ledger) -> None:
    app, tester = approval_app(tmp_path, ledger)

    async def scenario() -> cf.RunStatus:
        run = await app.astart("approved_transfer", transfer("t1"))
        await tester.run_until_idle(advance=False)
        assert ledger.balance("acme") == 700  # held while waiting
        assert app.status(run.id).waiting_on == ["approval"]
        await app.asignal(run.id, "approval", {"approved": True, "by": "alice"})
        await tester.run_until_idle()
        return app.status(run.id)

    st = asyncio.run(scenario())
    app.engine.dispose()
    assert st.status == "completed" and st.output["approved_by"] == "alice"
    assert (ledger.balance("acme"), ledger.balance("bob")) == (700, 300)


def test_no_decision_in_time_fails_and_returns_the_hold_once(tmp_path: Path, ledger: Ledger) -> None:
    app, tester = approval_app(tmp_path, ledger)
    start = app.clock.time()
    result = asyncio.run(tester.run("approved_transfer", transfer("t2")))
    app.engine.dispose()
    assert result.status == "failed" and result.error is not None and "ApprovalExpired" in result.error["type"]
    assert app.clock.time() - start >= approval.APPROVAL_WINDOW.total_seconds()  # the clock was advanced
    assert result.run.compensations == {"hold": "ok"}
    assert (ledger.balance("acme"), ledger.balance("bob")) == (1_000, 0)
    assert sum(1 for _ in ledger._db.execute("SELECT 1 FROM entries WHERE ref = 'release:t2'")) == 1


def test_refusal_returns_the_hold(tmp_path: Path, ledger: Ledger) -> None:
    app, tester = approval_app(tmp_path, ledger)

    async def scenario() -> cf.RunStatus:
        run = await app.astart("approved_transfer", transfer("t3"))
        await app.asignal(run.id, "approval", {"approved": False, "by": "bob"})
        await tester.run_until_idle()
        return app.status(run.id)

    st = asyncio.run(scenario())
    app.engine.dispose()
    assert st.status == "failed" and st.error is not None and "refused by bob" in st.error["message"]
    assert ledger.balance("acme") == 1_000


def test_subscription_charges_every_30_days_on_an_injected_clock(tmp_path: Path, ledger: Ledger) -> None:
    clock = cf.FakeClock(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    app = subscription.build(f"sqlite:///{tmp_path}/s.db", ledger, clock=clock)
    result = asyncio.run(WorkflowTester(app).run(
        "subscription", {"id": "s1", "customer": "carol", "price": 9, "periods": 3}))
    app.engine.dispose()
    assert result.status == "completed"
    assert result.output == {"charged_on": ["2024-01-01", "2024-01-31", "2024-03-01"]}
    assert ledger.balance("carol") == -27
    assert [result.steps[f"period-{i}"].kind for i in (1, 2)] == ["sleep", "sleep"]


def test_subscription_cancelled_during_its_sleep(tmp_path: Path, ledger: Ledger) -> None:
    app = subscription.build(f"sqlite:///{tmp_path}/c.db", ledger, clock=cf.FakeClock())
    tester = WorkflowTester(app)

    async def scenario() -> cf.RunStatus:
        run = await app.astart("subscription", {"id": "s2", "customer": "dan", "price": 5, "periods": 12})
        await tester.run_until_idle(advance=False)
        assert app.status(run.id).status == "sleeping"
        await app.acancel(run.id)
        await tester.run_until_idle(advance=False)
        return app.status(run.id)

    st = asyncio.run(scenario())
    app.engine.dispose()
    assert st.status == "cancelled" and ledger.balance("dan") == -5  # one charge, then no more


def test_web_service_starts_runs_with_the_requests_idempotency_key(tmp_path: Path, ledger: Ledger) -> None:
    app, tester = approval_app(tmp_path, ledger)
    with TestClient(create_web(app)) as http:
        first = http.post("/runs/approved_transfer", json=transfer("w1"), headers={"Idempotency-Key": "order-w1"})
        again = http.post("/runs/approved_transfer", json=transfer("w1"), headers={"Idempotency-Key": "order-w1"})
        assert (first.status_code, again.status_code) == (201, 200)
        run_id = first.json()["run_id"]
        assert again.json() == {"run_id": run_id, "created": False}
        assert len(app.runs()) == 1  # the retried request started nothing new

        assert http.post("/runs/approved_transfer", json=transfer("w1", 5),
                         headers={"Idempotency-Key": "order-w1"}).status_code == 409
        assert http.post("/runs/approved_transfer", json=transfer("w2")).status_code == 400
        assert http.post("/runs/nope", json={}, headers={"Idempotency-Key": "k"}).status_code == 404
        assert http.get("/runs/no-such-run").status_code == 404

        asyncio.run(tester.run_until_idle(advance=False))
        waiting = http.get(f"/runs/{run_id}").json()
        assert waiting["status"] == "waiting" and waiting["waiting_on"] == ["approval"]
        sent = http.post(f"/runs/{run_id}/signals/approval", json={"approved": True, "by": "web"})
        assert sent.status_code == 202
        asyncio.run(tester.run_until_idle())
        done = http.get(f"/runs/{run_id}").json()
    app.engine.dispose()
    assert done["status"] == "completed" and done["output"]["approved_by"] == "web"
    assert ledger.balance("bob") == 300


def test_web_service_answers_bad_requests_with_a_4xx_naming_the_fault(tmp_path: Path, ledger: Ledger) -> None:
    """Every bad request gets a client error saying what is wrong, never a 500 whose
    reason only the server log holds."""
    app, _ = approval_app(tmp_path, ledger)
    with TestClient(create_web(app), raise_server_exceptions=False) as http:
        long_key = http.post("/runs/approved_transfer", json=transfer("w3"), headers={"Idempotency-Key": "k" * 301})
        run_id = http.post("/runs/approved_transfer", json=transfer("w3"),
                           headers={"Idempotency-Key": "order-w3"}).json()["run_id"]
        not_json = http.post(f"/runs/{run_id}/signals/approval", content=b"approved",
                             headers={"content-type": "text/plain"})
        long_name = http.post(f"/runs/{run_id}/signals/{'s' * 201}", json={"approved": True})
    app.engine.dispose()
    assert (long_key.status_code, not_json.status_code, long_name.status_code) == (400, 400, 400)
    assert "idempotency_key is 301 characters long" in long_key.json()["error"], long_key.text
    assert "the body is not JSON" in not_json.json()["error"]
    assert "signal name is 201 characters long" in long_name.json()["error"], long_name.text


def test_examples_run_as_modules() -> None:
    import subprocess
    import sys

    for module in ("examples.approval", "examples.subscription"):
        done = subprocess.run([sys.executable, "-m", module], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert "completed" in done.stdout


# --- docker-compose.yml -------------------------------------------------------------------

def test_compose_file_services_images_health_and_ports() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "anvil", "bitcoind", "worker", "web", "web-worker"}
    for name, svc in services.items():
        if "image" in svc:  # pinned: an exact version tag, never latest/stable/nightly or a bare major
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+(\.\d+)?", svc["image"]), (name, svc["image"])
        else:
            assert svc["build"], name
        if name not in ("worker", "web", "web-worker"):
            assert svc["healthcheck"]["test"], name
    host_ports = [p.split(":")[-2] for svc in services.values() for p in svc.get("ports", [])]
    assert len(host_ports) == len(set(host_ports)), host_ports
    assert "5432" not in host_ports  # a local PostgreSQL keeps its port
    assert all(p.startswith("127.0.0.1:") for svc in services.values() for p in svc.get("ports", []))
    for name in ("worker", "web", "web-worker"):
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert services[name]["environment"]["CHAINFLOW_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert "--metrics-port" in services["worker"]["command"]
    assert "examples.webservice:web" in " ".join(services["web"]["command"])
    readme = (ROOT / "README.md").read_text()
    for name in services:
        assert f"`{name}`" in readme, f"README does not mention compose service {name}"


def test_flagship_mint_burns_once_when_the_ledger_fails(tmp_path: Path) -> None:
    """examples.mint with the ledger refusing: the mint confirms (12 blocks), the ledger
    step fails for good, the compensation burns on chain; the balance is back to zero and
    the chain holds one mint and one burn."""
    import asyncio

    from web3 import Web3

    import chainflow as cf
    from devnet import InProcessEVM, deploy_token, token_contract
    from examples import mint

    async def scenario() -> None:
        with InProcessEVM(block_time=0.05) as net:
            minter = net.accounts()[0]
            w3 = Web3(Web3.HTTPProvider(net.rpc_url))
            address = deploy_token(w3, minter.private_key)
            app = mint.build(f"sqlite:///{tmp_path / 'cf.db'}", net.rpc_url, minter.private_key, address,
                             Ledger(tmp_path / "ledger.db"), ledger_down=True)
            stop = asyncio.Event()
            worker = asyncio.create_task(app.worker(concurrency=4).run(stop))
            try:
                event: dict[str, Any] = {"id": "payment-1", "user_id": "u1", "amount": 7 * 10**18}
                run = await app.astart("on-payment-received", event, idempotency_key=event["id"])
                status = await app.await_run(run.id, timeout=120)
            finally:
                stop.set()
                await worker
            assert status.status == cf.RunState.FAILED and "ledger account u1 is closed" in str(status.error)
            assert status.compensations.get("mint-tokens") == cf.EntryState.OK, status.compensations
            token = token_contract(w3, address)
            holder = Web3.to_checksum_address("0x70997970C51812dc3A010C7d01b50e0d17dc79C8")
            assert token.functions.balanceOf(holder).call() == 0, "minted, then burned"
            # full_transactions=True: transaction dicts, which web3's stub does not tell from hashes
            sent = [tx for n in range(w3.eth.block_number + 1)
                    for tx in cast("list[TxData]", w3.eth.get_block(n, full_transactions=True)["transactions"])
                    if tx["from"] == minter.address and tx["to"] == address]
            assert len(sent) == 2, "one mint, one burn: the compensation ran exactly once"
            app.engine.dispose()

    asyncio.run(scenario())
