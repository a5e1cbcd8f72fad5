"""examples/btc_payout.py against a real regtest node: each order paid once on chain
(the exact amount, at the output its run returned, confirmed), a payout that cannot be
made compensated by a ledger credit, on SQLite and Postgres; and the demo run as a
module, starting its own node."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from adapters.bitcoin import BitcoinChain, DescriptorWallet, WalletError, master_key
from chainflow.storage.schema import reservations, submissions
from examples.btc_payout import WALLET_ENV, build, mine_every, pay_orders, payout_wallet
from examples.ledger import Ledger

from ..conftest import require_regtest

ROOT = Path(__file__).resolve().parent.parent.parent


def _sats(value: Any) -> int:
    return int(Decimal(value).scaleb(8))


async def test_orders_are_paid_once_and_a_failed_payout_credits_the_ledger(db_url: str, regtest_node: Any,
                                                                          tmp_path: Path) -> None:
    node = regtest_node
    btc = BitcoinChain("btc", rpc=node.rpc_url, network=node.network,
                       wallet=DescriptorWallet(master_key(os.urandom(16), node.network)))
    coins = [node.fund(btc.sender(), 400_000) for _ in range(2)]
    ledger = Ledger(tmp_path / "ledger.db")
    ledger.post("bob", "deposit", 1_000_000)
    app = build(db_url, btc, ledger, confirmations=3)
    app.ensure_schema()
    payees = [str(node.rpc("getnewaddress")) for _ in range(3)]
    orders = [{"id": "o1", "customer": "bob", "address": payees[0], "sats": 150_000},
              {"id": "o2", "customer": "bob", "address": payees[1], "sats": 123_457},
              {"id": "too-big", "customer": "bob", "address": payees[2], "sats": 900_000}]
    stop = threading.Event()
    miner = mine_every(node, 0.3, stop)
    try:
        statuses = await pay_orders(app, orders)
    finally:
        stop.set()
        miner.join()
        await btc.aclose()
    for order, status in zip(orders[:2], statuses[:2], strict=True):
        assert status.status == "completed", status.error
        tx = node.rpc("getrawtransaction", status.output["txid"], True)
        out = tx["vout"][status.output["output"]]
        assert _sats(out["value"]) == order["sats"]
        assert node.rpc("validateaddress", payees[orders.index(order)])["scriptPubKey"] == out["scriptPubKey"]["hex"]
        assert tx["confirmations"] >= 3 and {f"{i['txid']}:{i['vout']}" for i in tx["vin"]} <= set(coins)
    paid = {status.output["txid"] for status in statuses[:2]}
    assert len(paid) == 2, "one transaction per order, each on a coin of its own"
    big = statuses[2]
    assert big.status == "failed" and big.error is not None and "insufficient funds" in big.error["message"]
    assert ledger.balance("bob") == 1_000_000 - 150_000 - 123_457, "the failed payout's debit is credited back"
    with app.engine.begin() as conn:
        state = {r.idempotency_key: r.state for r in conn.execute(sa.select(submissions))}
        held = list(conn.execute(sa.select(reservations.c.outpoint).where(reservations.c.spent_at_block.is_(None))))
    app.engine.dispose()
    assert state == {"payout:o1": "final", "payout:o2": "final", "payout:too-big": "intent"}
    assert held == [], "no coin left reserved: the payouts' are spent, the failed one reserved none"


def test_the_wallet_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WALLET_ENV, raising=False)
    with pytest.raises(WalletError, match=WALLET_ENV):
        payout_wallet("regtest", own_devnet=False)  # someone else's node: never a dev key
    key = master_key(b"the operator's key", "regtest")
    monkeypatch.setenv(WALLET_ENV, key)
    wallet = payout_wallet("regtest", own_devnet=True)
    assert key not in repr(wallet) and WALLET_ENV in repr(wallet)


def test_the_demo_runs_as_a_module_on_its_own_node() -> None:
    require_regtest()
    env = {k: v for k, v in os.environ.items() if k not in (WALLET_ENV, "BTC_RPC_URL")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "-m", "examples.btc_payout"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "DEV-ONLY regtest key" in out
    assert [line.split(":")[1].strip() for line in out.splitlines() if line.startswith("  order-")] == \
        ["completed", "completed", "completed", "failed"]
    assert "insufficient funds" in out and "ledger balance of alice: 550000 sats" in out
