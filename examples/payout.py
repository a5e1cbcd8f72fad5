"""Payouts: an approval signal, then one ETH transfer per recipient in parallel
branches, each exactly once, with a ledger entry per payout.

    python -m examples.payout
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from web3 import Web3

import chainflow as cf
from adapters.evm import EvmChain, LocalSigner
from chainflow import Confirmations, TrackerConfig
from devnet import InProcessEVM

from .ledger import Ledger


def build(db_url: str, rpc_url: str, treasury_key: str, ledger: Ledger) -> cf.Chainflow:
    chain = EvmChain("local", rpc_url, LocalSigner.from_key(treasury_key))
    app = cf.Chainflow(db_url, chains=[chain], tracker=TrackerConfig(poll_interval=0.1))

    def record(batch: str, to: str, wei: int, tx_hash: str) -> int:
        return ledger.post(to, f"{batch}:{tx_hash}", -wei)

    async def pay(ctx: cf.Context, batch: str, to: str, wei: int) -> str:
        rcpt = await ctx.submit("transfer", chain="local", tx={"to": to, "value": wei},
                                idempotency_key=f"{batch}:{to}", finality=Confirmations(1))
        await ctx.step("record", record, batch, to, wei, rcpt.tx_hash)
        return rcpt.tx_hash

    @app.workflow("payout-batch")
    async def payout_batch(ctx: cf.Context, batch: dict[str, Any]) -> list[str]:
        await ctx.wait_for("approved", timeout=timedelta(hours=1))
        payouts = [pay(ctx, batch["id"], p["to"], p["wei"]) for p in batch["payouts"]]
        return await ctx.gather(*payouts, names=[p["to"] for p in batch["payouts"]])

    return app


async def demo() -> None:
    work = Path(tempfile.mkdtemp(prefix="chainflow-payout-"))
    with InProcessEVM(block_time=0.2) as net:
        treasury, *others = net.accounts()
        ledger = Ledger(work / "ledger.db")
        app = build(f"sqlite:///{work / 'chainflow.db'}", net.rpc_url, treasury.private_key, ledger)
        stop = asyncio.Event()
        worker = asyncio.create_task(app.worker(concurrency=8).run(stop))
        batch: dict[str, Any] = {"id": "batch-7",
                                 "payouts": [{"to": a.address, "wei": 10**17 * (i + 1)} for i, a in enumerate(others[:3])]}
        run = await app.astart("payout-batch", batch, idempotency_key=batch["id"])
        await asyncio.sleep(0.5)
        print(f"waiting for approval: {(await app.astatus(run.id)).status}")
        await app.asignal(run.id, "approved", {"by": "ops"})
        status = await app.await_run(run.id, timeout=60)
        stop.set()
        await worker
        print(f"{status.status}: {status.output}")
        w3 = Web3(Web3.HTTPProvider(net.rpc_url))
        for p in batch["payouts"]:
            print(f"  {p['to']}: balance {w3.eth.get_balance(p['to'])} wei")


if __name__ == "__main__":
    asyncio.run(demo())
