"""Benchmark 3, tracker scale: the cost of one new head with 10 / 1,000 / 10,000 pending
tracked transactions.

Each repetition (a fresh process, a fresh SQLite database, a fresh anvil; the
in-process EVM only when anvil is missing) inserts N synthetic pending submissions
with one signed attempt each, then mines heads one at a time, each holding one real
transaction of ours, and runs one tracker iteration per head (``Tracker.iteration()``:
renew the leadership lease, then ``step()``, as the tracker loop does every poll).
Figures: JSON-RPC requests per head (counted by the adapter's RPC client, which every
call goes through, not just the tracker's own bookkeeping), CPU ms and wall ms per
head.  The chain is configured as in production (a node URL: the adapter's keep-alive
HTTP session).  Targets: RPC calls constant in N; CPU ≤ 5 ms at 10,000.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import tempfile
import time
from typing import Any

from .harness import Options, environment, environment_markdown, sized_figures

TITLE = "tracker scale: cost per new head vs pending tracked transactions"
SIZES = [10, 1_000, 10_000]
QUICK_SIZES = [10, 200]
HEADS = 20


def available() -> str | None:
    try:
        import adapters.evm  # noqa: F401
        import devnet  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"not available: {exc}"
    return None


def _seed(app: Any, chain: str, sender: str, n: int, head: int) -> None:
    import sqlalchemy as sa

    from chainflow.storage.schema import submissions, tx_attempts

    now = time.time()
    rows = [dict(chain=chain, sender=sender, idempotency_key=f"synthetic-{i}", request="{}",
                 finality='{"kind":"confirmations","n":3}', nonce=10_000_000 + i, state="broadcast",
                 created_at=now, updated_at=now, last_broadcast_block=head + 10_000) for i in range(n)]
    with app.engine.begin() as conn:
        conn.execute(submissions.insert(), rows)
        ids = [r.id for r in conn.execute(sa.select(submissions.c.id).where(submissions.c.chain == chain))]
        conn.execute(tx_attempts.insert(), [dict(submission_id=i, chain=chain, tx_hash="0x" + secrets.token_hex(32),
                                                 raw=b"\x00", fees="{}", created_at=now) for i in ids])


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import chainflow as cf
    from adapters.evm import EvmChain, LocalSigner
    from chainflow.chain import chainstore
    from chainflow.chain.tracker import Tracker
    from devnet import Anvil, InProcessEVM
    from devnet.anvil import AnvilNotInstalled, anvil_binary

    n = spec["pending"]
    try:  # a separate process, so the node's own CPU is not counted as the tracker's
        anvil_binary()
        devnet: Any = Anvil()
    except AnvilNotInstalled:
        devnet = InProcessEVM()
    with devnet as net:
        key = net.accounts()[0].private_key
        chain = EvmChain("bench", net.rpc_url, LocalSigner.from_key(key))
        app = cf.Chainflow(f"sqlite:///{os.path.join(tempfile.mkdtemp(), 'tracker.db')}", chains=[chain])
        app.ensure_schema()
        net.set_automine(False)

        async def main() -> dict[str, Any]:
            tracker = Tracker(app.database, app.clock, chain, "bench")
            head = (await chain.head()).number
            await asyncio.to_thread(_seed, app, "bench", chain.sender(), n, head)
            await tracker.iteration()  # first contact: takes the lease, stores the starting window
            nonce = await chain.pending_nonce(chain.sender())
            request = await chain.estimate(chain.prepare({"to": chain.sender(), "value": 0}))
            cpu, wall, rpc = [], [], []
            for i in range(HEADS):
                # one real tracked tx per head, so the match path (receipt fetch) runs too
                signed = await chain.sign(request, nonce + i, None)
                sub_id = await app.adb(chainstore.open_gap_fill, "bench", chain.sender(), nonce + i, "{}", time.time())
                await app.adb(chainstore.add_attempt, sub_id, "bench", signed, time.time())
                await app.adb(chainstore.mark_broadcast, sub_id, time.time())
                await chain.broadcast(signed.raw)
                await asyncio.to_thread(net.mine, 1)
                calls = chain.rpc.calls
                c0, w0 = time.process_time(), time.perf_counter()
                stats = await tracker.iteration()  # what the tracker loop does each poll
                cpu.append((time.process_time() - c0) * 1000)
                wall.append((time.perf_counter() - w0) * 1000)
                rpc.append(chain.rpc.calls - calls)
                assert stats is not None and stats.new_blocks == 1 and stats.matched == 1, stats
            await chain.aclose()
            return {"rpc_per_head": statistics.median(rpc), "rpc_max": max(rpc),
                    "cpu_ms": statistics.median(cpu), "wall_ms": statistics.median(wall)}

        return asyncio.run(main())


def run(opts: Options, command: str) -> str:
    env = environment(opts)
    sizes = QUICK_SIZES if opts.quick else SIZES
    figs = sized_figures(
        "tracker", "pending", sizes, opts,
        {"rpc": lambda r: r["rpc_per_head"], "cpu": lambda r: r["cpu_ms"], "wall": lambda r: r["wall_ms"]},
        lambda r: f"{r['rpc_per_head']} RPC/head, {r['cpu_ms']:.2f} CPU ms, {r['wall_ms']:.2f} wall ms")
    out = [f"## tracker: {TITLE}", "", environment_markdown(env, command),
           f"- **Repetitions:** {opts.reps}, each a fresh process, database and anvil; "
           f"median over {HEADS} heads per repetition, then median and min–max over repetitions", "",
           "| pending tracked txs | JSON-RPC requests per head | CPU ms per head | wall ms per head |",
           "|---|---|---|---|"]
    for n in sizes:
        out.append(f"| {n:,} | {figs[(n, 'rpc')].cell('{:.0f}')} | {figs[(n, 'cpu')].cell('{:.2f}')} | "
                   f"{figs[(n, 'wall')].cell('{:.2f}')} |")
    out += ["", "Targets: requests per head constant in the number pending; CPU ≤ 5 ms per head at 10,000.", ""]
    return "\n".join(out)
