"""A worker process for the reorg-while-down test (run as a script, SIGKILLed at will).

    python tests/reorg/worker_proc.py

Environment:
    CF_URL       database URL (required)
    CF_RPC       the devnet's JSON-RPC URL (required)
    CF_TOKEN     the token contract address (required)
    CF_KEY       the minter's private key (required)
    CF_LEDGER    side-effect log: one "<what> <detail>" line per step/compensation run
    CF_WORKER    worker id

The test process imports ``build`` too, for a client app with the same workflow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import chainflow as cf
from adapters.evm import EvmChain, EvmReceipt, LocalSigner
from chainflow.testing import CallLog

CHAIN = "local"


def build(url: str, rpc_url: str, token_address: str, key: str, ledger: str) -> cf.Chainflow:
    from web3 import Web3

    from devnet import token_contract

    signer = LocalSigner.from_key(key)
    token = token_contract(Web3(Web3.HTTPProvider(rpc_url)), token_address)
    app = cf.Chainflow(url, chains=[EvmChain(CHAIN, rpc_url, signer)],
                       tracker=cf.TrackerConfig(poll_interval=0.05, rebroadcast_blocks=1, leader_lease=1.5),
                       lease_seconds=5.0)

    log = CallLog(Path(ledger))

    def effect(what: str) -> Any:
        def run(detail: str) -> str:
            log.hit(f"{what} {detail}")
            return detail
        return run

    @app.workflow("mint_flow")
    async def mint_flow(ctx: cf.Context, ev: dict[str, Any]) -> dict[str, Any]:
        await ctx.step("reserve", effect("reserve"), ev["id"], compensate=effect("unreserve"))
        r = await ctx.submit("mint", chain=CHAIN, tx=token.functions.mint(signer.address, 5),
                             idempotency_key=ev["id"], finality=cf.Confirmations(2),
                             compensate=lambda receipt: effect("burn")(receipt.tx_hash))
        tx = await ctx.step("credit", effect("credit"), r.tx_hash, compensate=effect("debit"))
        await ctx.step("notify", effect("notify"), tx, compensate=effect("unnotify"))
        assert isinstance(r, EvmReceipt)
        return {"tx": r.tx_hash, "block": r.block_number, "block_hash": r.block_hash, "nonce": r.nonce}

    return app


def main() -> None:
    env = os.environ
    app = build(env["CF_URL"], env["CF_RPC"], env["CF_TOKEN"], env["CF_KEY"], env.get("CF_LEDGER", os.devnull))
    app.run_worker(concurrency=4, poll_interval=0.05, worker_id=env.get("CF_WORKER"))


if __name__ == "__main__":
    main()
    sys.exit()
