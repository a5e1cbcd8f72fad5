"""The flagship: a payment received -> mint an ERC-20 with 12 confirmations -> credit a
ledger.  If a later step fails for good (or a reorg breaks the mint's finality), the
mint's compensation burns what was minted, on chain, exactly once (its idempotency key
is derived from the mint's).

Runs on the embedded defaults — a SQLite file and an in-process EVM mining a block every
0.2 s — so it needs nothing but the package:  python -m examples.mint
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from web3 import Web3

import chainflow as cf
from adapters.evm import EvmChain, LocalSigner
from chainflow import Confirmations, TrackerConfig
from devnet import InProcessEVM, deploy_token, token_contract

from .ledger import Ledger


CONFIRMATIONS = 12


def build(db_url: str, rpc_url: str, minter_key: str, token_address: str, ledger: Ledger,
          *, ledger_down: bool = False) -> cf.Chainflow:
    """``ledger_down``: the ledger refuses every posting (to show the burn)."""
    w3 = Web3(Web3.HTTPProvider(rpc_url))
    token = token_contract(w3, token_address)
    chain = EvmChain("local", rpc_url, LocalSigner.from_key(minter_key))
    app = cf.Chainflow(db_url, chains=[chain], tracker=TrackerConfig(poll_interval=0.1))
    users = {"u1": {"id": "u1", "wallet": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"}}

    def find_user(user_id: str) -> dict[str, Any]:
        return users[user_id]

    def post_ledger(user_id: str, tx_hash: str, amount: int) -> int:
        if ledger_down:
            raise RuntimeError(f"ledger account {user_id} is closed")
        return ledger.post(user_id, tx_hash, amount)

    def reverse_ledger(entry_id: int) -> None:
        ledger.post("u1", f"reversal of {entry_id}", -1)

    @app.workflow("on-payment-received")
    async def on_payment_received(ctx: cf.Context, event: dict[str, Any]) -> dict[str, Any]:
        user = await ctx.step("lookup-user", find_user, event["user_id"])

        async def burn_minted(ctx: cf.Context, minted: cf.Receipt) -> str:
            burn = await ctx.submit("burn", chain="local", tx=token.functions.burn(user["wallet"], event["amount"]),
                                    finality=Confirmations(CONFIRMATIONS))
            return burn.tx_hash

        rcpt = await ctx.submit("mint-tokens", chain="local",
                                tx=token.functions.mint(user["wallet"], event["amount"]),
                                idempotency_key=event["id"], finality=Confirmations(CONFIRMATIONS),
                                compensate=burn_minted)
        entry = await ctx.step("credit-ledger", post_ledger, user["id"], rcpt.tx_hash, event["amount"],
                               compensate=reverse_ledger, retry=cf.Retry(max_attempts=2, initial=0.1))
        return {"tx": rcpt.tx_hash, "block": rcpt.block_number, "ledger_entry": entry}

    return app


async def demo() -> None:
    work = Path(tempfile.mkdtemp(prefix="chainflow-demo-"))
    print("starting an in-process EVM (a few seconds) and deploying the demo token ...", flush=True)
    with InProcessEVM(block_time=0.2) as net:
        minter = net.accounts()[0]
        w3 = Web3(Web3.HTTPProvider(net.rpc_url))
        token_address = deploy_token(w3, minter.private_key)
        ledger = Ledger(work / "ledger.db")
        app = build(f"sqlite:///{work / 'chainflow.db'}", net.rpc_url, minter.private_key, token_address, ledger)
        stop = asyncio.Event()
        worker = asyncio.create_task(app.worker(concurrency=8).run(stop))
        event: dict[str, Any] = {"id": "payment-1001", "user_id": "u1", "amount": 250 * 10**18}
        print(f"minting 250 tokens for payment-1001 and waiting for {CONFIRMATIONS} confirmations ...", flush=True)
        first = await app.astart("on-payment-received", event, idempotency_key=event["id"])
        again = await app.astart("on-payment-received", event, idempotency_key=event["id"])
        status = await app.await_run(first.id, timeout=60)
        stop.set()
        await worker
        print(f"run {first.id}: {status.status}; same key again -> same run: {again.id == first.id}")
        print(f"receipt: {status.output}")
        for e in await app.ajournal(first.id):
            print(f"  {e.kind:<7} {e.key:<14} {e.status:<5} attempts={e.attempts}")
        token = token_contract(w3, token_address)
        print(f"token balance of u1: {token.functions.balanceOf(Web3.to_checksum_address('0x70997970C51812dc3A010C7d01b50e0d17dc79C8')).call()}")
        print(f"ledger balance of u1: {ledger.balance('u1')}  (database and ledger in {work})")


if __name__ == "__main__":
    asyncio.run(demo())
