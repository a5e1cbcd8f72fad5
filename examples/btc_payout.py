"""Bitcoin payouts: each order debits the customer's ledger balance, then pays the
customer's address exactly once on chain and waits for confirmations; a payout that
cannot complete (insufficient funds, a foreign spend of its coins) credits the ledger
back through the debit's compensation.

    python -m examples.btc_payout          # starts its own regtest node (litecoind or bitcoind)

Against a node of your own (the payout wallet must hold confirmed coins, and someone
must mine):

    BTC_RPC_URL=http://user:pass@127.0.0.1:18443 BTC_NETWORK=regtest \\
    PAYOUT_TPRV=tprv... python -m examples.btc_payout

The payout wallet's key comes from the environment (``PAYOUT_TPRV``: a tprv/xprv, a
``wpkh()`` descriptor or WIF keys) and never reaches the database.  On the demo's own
regtest node, without ``PAYOUT_TPRV``, a fixed development key is used and said so.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import chainflow as cf
from adapters.bitcoin import BitcoinChain, BitcoinReceipt, DescriptorWallet, master_key

from .ledger import Ledger

WALLET_ENV = "PAYOUT_TPRV"
#: Public by construction (a fixed seed): for regtest only, never for real funds.
DEV_SEED = b"chainflow examples: regtest payout wallet, DEV ONLY"


def build(db_url: str, btc: BitcoinChain, ledger: Ledger, *, confirmations: int = 3,
          batching: bool = False) -> cf.Chainflow:
    tracker = cf.TrackerConfig(poll_interval=0.2, batching={btc.name: cf.Batching(window=1.0)} if batching else {})
    app = cf.Chainflow(db_url, chains=[btc], tracker=tracker)

    def debit(order: dict[str, Any]) -> dict[str, Any]:
        ledger.post(order["customer"], f"payout:{order['id']}", -order["sats"])
        return order

    def credit_back(order: dict[str, Any]) -> None:
        ledger.post(order["customer"], f"refund:{order['id']}", order["sats"])

    @app.workflow("order-payout")
    async def order_payout(ctx: cf.Context, order: dict[str, Any]) -> dict[str, Any]:
        await ctx.step("debit-balance", debit, order, compensate=credit_back)
        rcpt = await ctx.submit("payout", chain=btc.name, tx=btc.pay(order["address"], sats=order["sats"]),
                                idempotency_key=f"payout:{order['id']}", finality=cf.Confirmations(confirmations))
        assert isinstance(rcpt, BitcoinReceipt)  # the chain's family: it says which output pays the order
        return {"txid": rcpt.tx_hash, "output": rcpt.output_index, "block": rcpt.block_number}

    return app


def payout_wallet(network: str, *, own_devnet: bool) -> DescriptorWallet:
    """The wallet from ``PAYOUT_TPRV``; on the demo's own regtest node, a dev key when unset."""
    if os.environ.get(WALLET_ENV) or not own_devnet:
        return DescriptorWallet.from_env(WALLET_ENV)
    print(f"{WALLET_ENV} is not set: paying from a DEV-ONLY regtest key (its seed is public; never fund it "
          f"on a real network): {master_key(DEV_SEED, network)}")
    return DescriptorWallet(master_key(DEV_SEED, network), source="the examples' dev-only regtest key")


async def pay_orders(app: cf.Chainflow, orders: list[dict[str, Any]], timeout: float = 120) -> list[cf.RunStatus]:
    """Run a worker until every order's run has finished; their final statuses."""
    stop = asyncio.Event()
    worker = asyncio.create_task(app.worker(concurrency=16).run(stop))
    try:
        runs = [await app.astart("order-payout", o, idempotency_key=f"order:{o['id']}") for o in orders]
        return [await app.await_run(r.id, timeout=timeout) for r in runs]
    finally:
        stop.set()
        await worker


def mine_every(node: Any, seconds: float, stop: threading.Event) -> threading.Thread:
    """The demo's own miner: a block every ``seconds`` until ``stop``."""

    def loop() -> None:
        while not stop.wait(seconds):
            node.mine(1)

    thread = threading.Thread(target=loop, name="regtest-miner", daemon=True)
    thread.start()
    return thread


async def demo() -> None:
    work = Path(tempfile.mkdtemp(prefix="chainflow-btc-payout-"))
    ledger = Ledger(work / "ledger.db")
    ledger.post("alice", "deposit", 1_000_000)
    url, node = os.environ.get("BTC_RPC_URL"), None
    if url is None:
        from devnet import RegtestNode

        node = RegtestNode().start()
        url, network = node.rpc_url, node.network
        print(f"started a regtest node: {node!r} ({network})")
    else:
        network = os.environ.get("BTC_NETWORK", "regtest")
    btc = BitcoinChain("btc", rpc=url, network=network, wallet=payout_wallet(network, own_devnet=node is not None))
    stop_mining = threading.Event()
    miner = None
    try:
        print(f"payout wallet: {btc.sender()}")
        if node is not None:
            # a coin per payout: unbatched payouts in flight at once each spend coins of their own
            # (change is spendable once its payout is final); build(..., batching=True) pays them in one tx
            coins = [node.fund(btc.sender(), 1_000_000) for _ in range(3)]
            print(f"funded it with 3 coins of 1,000,000 sats: {', '.join(coins)}")
            miner = mine_every(node, 0.5, stop_mining)
            payees = [str(node.rpc("getnewaddress")) for _ in range(4)]
        else:
            payees = [btc.sender()] * 4  # paying yourself is a real payout too: nothing to set up
        app = build(f"sqlite:///{work / 'chainflow.db'}", btc, ledger)
        app.ensure_schema()
        orders = [{"id": f"order-{i}", "customer": "alice", "address": a, "sats": 150_000}
                  for i, a in enumerate(payees[:3])]
        # more than the wallet holds: fails before anything is signed, and is compensated
        orders.append({"id": "order-big", "customer": "alice", "address": payees[3], "sats": 50_000_000})
        for order, status in zip(orders, await pay_orders(app, orders), strict=True):
            outcome = status.output if status.status == "completed" else (status.error or {}).get("message")
            print(f"  {order['id']}: {status.status}: {outcome}")
        print(f"ledger balance of alice: {ledger.balance('alice')} sats (1,000,000 deposited, 3 payouts of 150,000 "
              f"debited, the failed one credited back; ledger and database in {work})")
    finally:
        stop_mining.set()
        if miner is not None:
            miner.join()
        await btc.aclose()  # before the node stops: an idle keep-alive connection delays its shutdown
        if node is not None:
            node.stop()

if __name__ == "__main__":
    asyncio.run(demo())
