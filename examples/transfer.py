"""A plain ETH transfer workflow, configured from the environment so a worker can
serve it:  chainflow worker examples.transfer:app

    CHAINFLOW_DATABASE_URL  database (default sqlite:///chainflow.db)
    CHAINFLOW_EVM_RPC       node URL (default http://127.0.0.1:8545)
    MINTER_KEY              hex private key of the sending wallet

Start one from any process:
    app.start("transfer", {"id": "refund-9", "to": "0x…", "wei": 10**16}, idempotency_key="refund-9")
"""

from __future__ import annotations

import os
from typing import Any

import chainflow as cf
from adapters.evm import EvmChain, LocalSigner
from chainflow import Confirmations

chain = EvmChain("evm", os.environ.get("CHAINFLOW_EVM_RPC", "http://127.0.0.1:8545"),
                 LocalSigner.from_env("MINTER_KEY"))
app = cf.Chainflow(chains=[chain])


@app.workflow("transfer")
async def transfer(ctx: cf.Context, order: dict[str, Any]) -> dict[str, Any]:
    rcpt = await ctx.submit("send", chain="evm", tx={"to": order["to"], "value": order["wei"]},
                            idempotency_key=order["id"], finality=Confirmations(order.get("confirmations", 3)))
    return {"tx": rcpt.tx_hash, "block": rcpt.block_number, "fee_wei": rcpt.effective_fee}
