"""Benchmark 2, on-chain throughput: mint workflows end to end on anvil, one sender.

Both peers run against a fresh anvil mining a block every second (a chain with block
times, not instant automine, is what a payment service faces):

naive      a web3.py loop: build, sign, send, wait for the receipt, one mint at a time
chainflow  N mint workflows (``ctx.submit`` with ``Confirmations(1)``) through one worker

Figure: mints per second, first start to last completion. After the chainflow run the
chain is scanned: exactly one mined transaction per idempotency key and contiguous
nonces, or the repetition fails. Target: chainflow ≥ 5× the naive loop.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from typing import Any

from .harness import Figure, Options, environment, environment_markdown, log, ratio, run_child

TITLE = "on-chain throughput: mint workflows on anvil (1 s blocks), one sender (mints/s)"
CHAINFLOW_MINTS, NAIVE_MINTS = 1_000, 20
QUICK = (40, 3)


def available() -> str | None:
    try:
        from devnet.anvil import anvil_binary

        anvil_binary()
    except Exception as exc:  # noqa: BLE001
        return f"not available: {exc}"
    return None


def _naive(net: Any, key: str, token_address: str, n: int) -> float:
    from eth_account import Account
    from web3 import Web3

    from devnet import token_contract

    w3 = Web3(Web3.HTTPProvider(net.rpc_url))
    token = token_contract(w3, token_address)
    me = Account.from_key(key).address
    t0 = time.perf_counter()
    for i in range(n):
        tx = token.functions.mint(me, i + 1).build_transaction(
            {"from": me, "nonce": w3.eth.get_transaction_count(me, "pending"), "chainId": w3.eth.chain_id})
        signed = Account.sign_transaction(tx, key)
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction), poll_latency=0.05)
    return time.perf_counter() - t0


def _chainflow(net: Any, key: str, token_address: str, n: int) -> float:
    from web3 import Web3

    import chainflow as cf
    from adapters.evm import EvmChain, LocalSigner
    from devnet import token_contract

    token = token_contract(Web3(Web3.HTTPProvider(net.rpc_url)), token_address)
    chain = EvmChain("anvil", net.rpc_url, LocalSigner.from_key(key))
    app = cf.Chainflow(f"sqlite:///{os.path.join(tempfile.mkdtemp(), 'onchain.db')}", chains=[chain],
                       tracker=cf.TrackerConfig(poll_interval=0.1))

    @app.workflow("mint")
    async def mint(ctx: cf.Context, i: int) -> str:
        rcpt = await ctx.submit("mint", chain="anvil", tx=token.functions.mint(chain.sender(), i + 1),
                                idempotency_key=f"mint-{i}", finality=cf.Confirmations(1))
        return rcpt.tx_hash

    app.ensure_schema()

    async def main() -> float:
        stop = asyncio.Event()
        worker = asyncio.create_task(app.worker(concurrency=128).run(stop))
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        handles = [await app.astart("mint", i) for i in range(n)]
        for h in handles:
            st = await app.await_run(h.id, timeout=600)
            if st.status != "completed":
                raise AssertionError(f"run {h.id} ended {st.status}: {st.error}")
        elapsed = time.perf_counter() - t0
        stop.set()
        await worker
        return elapsed

    return asyncio.run(main())


def _exactly_once(net: Any, token_address: str, sender: str, n: int) -> None:
    """Every amount 1..n minted exactly once; the sender's nonces have no gap."""
    from web3 import Web3

    from devnet import token_contract

    w3 = Web3(Web3.HTTPProvider(net.rpc_url))
    token = token_contract(w3, token_address)
    amounts = [e["args"]["value"] for e in token.events.Transfer().get_logs(from_block=0)]
    minted = sorted(a for a in amounts)
    if minted != list(range(1, n + 1)):
        raise AssertionError(f"mints on chain are not exactly once: {len(minted)} transfers for {n} keys")
    nonces = []
    for number in range(w3.eth.block_number + 1):
        txs: list[Any] = list(w3.eth.get_block(number, full_transactions=True)["transactions"])
        for tx in txs:
            if tx["from"] == sender:
                nonces.append(tx["nonce"])
    if sorted(nonces) != list(range(len(nonces))):
        raise AssertionError("sender nonces are not contiguous")


def child(spec: dict[str, Any]) -> dict[str, Any]:
    from web3 import Web3

    from devnet import Anvil, deploy_token

    with Anvil(block_time=1) as net:
        acct = net.accounts()[0]
        token_address = deploy_token(Web3(Web3.HTTPProvider(net.rpc_url)), acct.private_key, max_mint=10**30)
        n = spec["mints"]
        if spec["peer"] == "naive":
            elapsed = _naive(net, acct.private_key, token_address, n)
        else:
            elapsed = _chainflow(net, acct.private_key, token_address, n)
            _exactly_once(net, token_address, acct.address, n)
        return {"mints": n, "elapsed": elapsed, "per_s": n / elapsed}


def run(opts: Options, command: str) -> str:
    env = environment(opts)
    sizes = {"naive": QUICK[1] if opts.quick else NAIVE_MINTS,
             "chainflow": QUICK[0] if opts.quick else CHAINFLOW_MINTS}
    figs = {p: Figure() for p in sizes}
    for rep in range(1, opts.reps + 1):
        for peer, n in sizes.items():
            r = run_child("onchain", {"peer": peer, "mints": n}, opts.timeout)
            if "error" in r:
                figs[peer].problem = f"failed: {r['error']}"
                log(f"  rep {rep} {peer}: FAILED {r['error']}\n{r.get('detail', '')}")
                continue
            figs[peer].values.append(r["per_s"])
            log(f"  rep {rep} {peer}: {n} mints in {r['elapsed']:.1f}s = {r['per_s']:.2f}/s")
    out = [f"## onchain: {TITLE}", "", environment_markdown(env, command),
           f"- **Repetitions:** {opts.reps}, each a fresh process and a fresh anvil (`--block-time 1`)", "",
           "| peer | mints per run | mints/s |", "|---|---|---|",
           f"| naive web3.py loop (sign, send, wait, one at a time) | {sizes['naive']} | {figs['naive'].cell('{:.2f}')} |",
           f"| chainflow (`ctx.submit`, Confirmations(1)) | {sizes['chainflow']} | "
           f"{figs['chainflow'].cell('{:.2f}')} |", "",
           f"chainflow / naive: **{ratio(figs['chainflow'], figs['naive'])}** (target ≥ 5×). After every chainflow "
           "repetition the chain is scanned: each key minted exactly once, sender nonces contiguous.", ""]
    return "\n".join(out)
