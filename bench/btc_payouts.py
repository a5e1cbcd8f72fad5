"""Benchmark 7, Bitcoin payouts on a real regtest node (Debian's litecoind 0.21, or a
bitcoind named by ``$CHAINFLOW_BITCOIND``): chainflow vs the node wallet's own loop.

Both arms face the same node and the same block cadence: a fresh regtest node per
repetition and a miner thread mining a block every ``BLOCK_MS`` ms from before the
timed region to its end.

naive      the node wallet's best one-at-a-time loop: ``sendtoaddress`` then poll until
           the payment has 1 confirmation, one payout after another
chainflow  N payout workflows (``ctx.submit(..., tx=btc.pay(address, sats=...),
           finality=Confirmations(1))``) through one worker, with batching on
           (``cf.Batching()``: up to 50 payouts per transaction) and off (one
           transaction per payout, each on coins of its own: the wallet is funded
           with one coin per payout beforehand)

Figure: payouts per second, first start to last completion, on SQLite and Postgres.
After every chainflow repetition the chain is read back: every payee has exactly one
output paying it, of the exact amount, in the transaction and at the output index the
run returned; no outpoint is reserved by two intents and no coin stays held by a
finished intent.  Target: chainflow batched ≥ 5× the naive loop.

A second figure is the tracker's cost per new block with N payouts pending in the
mempool (each on its own coins, unbatched): one block per head holding one more of
our payouts (so the match and receipt path runs), one ``Tracker.iteration()`` per
head, counting the tracker's calls into the adapter (``HeadStats.rpc_calls``) and
the node's JSON-RPC requests they made.  Target: constant in N.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .harness import Figure, Options, environment, environment_markdown, failed, log, ratio, run_on_database

TITLE = "Bitcoin payouts on a regtest node: chainflow (batched, unbatched) vs sendtoaddress + 1 confirmation"
PAYOUTS, NAIVE_PAYOUTS, BLOCK_MS = 500, 30, 1000
PENDING, HEADS = [10, 100, 500], 10
# --quick only shows that every arm runs end to end and the report renders: each arm
# still batches (8 payouts share one transaction), still funds one coin per unbatched
# payout, and the tracker still meets pending payouts it must not match
QUICK = {"payouts": 8, "naive": 2, "block_ms": 200, "heads": 3}
QUICK_PENDING = [20]
PEERS = ("naive", "batched", "unbatched")
SATS = 10_000  # each payout pays SATS + its index: every amount on chain tells its payout
COIN_SATS = 100_000  # unbatched: one funded coin per payout, the fee budget at max_feerate included


def available() -> str | None:
    try:
        import adapters.bitcoin  # noqa: F401
        from devnet.regtest import require_node_binary

        require_node_binary()
    except Exception as exc:  # noqa: BLE001
        return f"not available: {exc}"
    return None


# --- the node and its miner --------------------------------------------------------


@contextmanager
def mining(node: Any, every_ms: int) -> Iterator[None]:
    """A block every ``every_ms`` ms from a thread of its own, until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_ms / 1000):
            node.mine(1)

    thread = threading.Thread(target=loop, name="bench-miner", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def payees(network: str, n: int) -> list[str]:
    """``n`` fresh P2WPKH addresses nobody holds keys for: destinations only."""
    from adapters.bitcoin.addresses import address_of, p2wpkh_script
    from adapters.bitcoin.networks import network as network_named

    net = network_named(network)
    return [str(address_of(p2wpkh_script(secrets.token_bytes(20)), net)) for _ in range(n)]


def chain_for(node: Any, seed: bytes) -> Any:
    from adapters.bitcoin import BitcoinChain, DescriptorWallet, master_key

    return BitcoinChain("btc", rpc=node.rpc_url, network=node.network,
                        wallet=DescriptorWallet(master_key(seed, node.network), source="the benchmark's seed"))


async def fund_coins(node: Any, btc: Any, coins: int, sats: int) -> None:
    """Give the payout wallet ``coins`` confirmed coins of ``sats`` each: one funding
    output from the node wallet, split by one transaction of the wallet's own.  Runs in
    an event loop of its own, whose keep-alive connection to the node is closed here: left
    open, it holds up the node's ``stop`` for its whole ``stop_timeout``."""
    try:
        funded = node.fund(btc.sender(), coins * sats + 1_000_000)
        request = await btc.estimate({"outputs": [[btc.sender(), sats]] * coins})
        split = await btc.sign(request, [funded], None)
        await btc.broadcast(split.raw)
        node.mine(1)
        have = await btc.coins(btc.sender())
    finally:
        await btc.aclose()
    if len(have) < coins:
        raise AssertionError(f"funding left {len(have)} coins, wanted {coins}")


def database_url(spec: dict[str, Any]) -> str:
    if spec["backend"] == "postgres":
        return str(spec["target"])
    return f"sqlite:///{os.path.join(spec['target'], 'btc.db')}"


def payout_app(url: str, btc: Any, batched: bool, **tracker: Any) -> Any:
    import chainflow as cf
    from adapters.bitcoin import BitcoinReceipt

    config = cf.TrackerConfig(poll_interval=0.1, batching={"btc": cf.Batching()} if batched else {}, **tracker)
    app = cf.Chainflow(url, chains=[btc], tracker=config)

    @app.workflow("payout")
    async def payout(ctx: cf.Context, order: dict[str, Any]) -> list[Any]:
        rcpt = await ctx.submit("payout", chain="btc", tx=btc.pay(order["to"], sats=order["sats"]),
                                idempotency_key=f"payout:{order['id']}", finality=cf.Confirmations(1))
        assert isinstance(rcpt, BitcoinReceipt)  # the chain's family: it says which output pays
        return [rcpt.tx_hash, rcpt.output_index]

    app.ensure_schema()
    return app


# --- the two arms -------------------------------------------------------------------


def naive(node: Any, n: int, block_ms: int) -> dict[str, Any]:
    """sendtoaddress, then wait for 1 confirmation (polled every 50 ms), n times."""
    from devnet.regtest import sats_to_coins

    to = payees(node.network, n)
    with mining(node, block_ms):
        t0 = time.perf_counter()
        for i, address in enumerate(to):
            txid = node.rpc("sendtoaddress", address, sats_to_coins(SATS + i))
            while int(node.rpc("getrawtransaction", txid, True).get("confirmations", 0)) < 1:
                time.sleep(0.05)
        elapsed = time.perf_counter() - t0
    return {"payouts": n, "elapsed": elapsed, "per_s": n / elapsed, "txs": n}


def chainflow_arm(node: Any, spec: dict[str, Any]) -> dict[str, Any]:
    n, batched = spec["payouts"], spec["peer"] == "batched"
    btc = chain_for(node, secrets.token_bytes(16))
    # batched: a few large coins (a batch of 50 budgets ~0.9M sats at max_feerate);
    # unbatched: one coin per payout, since change is spendable only once confirmed
    asyncio.run(fund_coins(node, btc, 24, 2_000_000) if batched else fund_coins(node, btc, n + 4, COIN_SATS))
    orders = [{"id": i, "to": address, "sats": SATS + i} for i, address in enumerate(payees(node.network, n))]
    app = payout_app(database_url(spec), btc, batched)
    start_height = node.height()

    async def main() -> tuple[float, list[Any]]:
        stop = asyncio.Event()
        worker = asyncio.create_task(app.worker(concurrency=128).run(stop))
        await asyncio.sleep(0.3)
        with mining(node, spec["block_ms"]):
            t0 = time.perf_counter()
            handles = [await app.astart("payout", o, idempotency_key=f"order:{o['id']}") for o in orders]
            outputs = []
            for h in handles:
                st = await app.await_run(h.id, timeout=600)
                if st.status != "completed":
                    raise AssertionError(f"run {h.id} ended {st.status}: {st.error}")
                outputs.append(st.output)
            elapsed = time.perf_counter() - t0
        stop.set()
        await worker
        await btc.aclose()
        return elapsed, outputs

    elapsed, outputs = asyncio.run(main())
    txs = check_paid_once(node, start_height, orders, outputs)
    check_reservations(app)
    app.engine.dispose()
    return {"payouts": n, "elapsed": elapsed, "per_s": n / elapsed, "txs": txs}


def check_paid_once(node: Any, start_height: int, orders: list[dict[str, Any]], outputs: list[Any]) -> int:
    """Every payee paid by exactly one output on chain, of its exact amount, where its
    run says; returns how many transactions carried the payouts."""
    from decimal import Decimal

    paid: dict[str, list[tuple[str, int, int]]] = {}
    for height in range(start_height + 1, node.height() + 1):
        block = node.rpc("getblock", node.rpc("getblockhash", height), 2)
        for tx in block["tx"]:
            for out in tx["vout"]:
                address = out["scriptPubKey"].get("address") or (out["scriptPubKey"].get("addresses") or [None])[0]
                if address is not None:
                    sats = int(Decimal(out["value"]).scaleb(8))
                    paid.setdefault(address, []).append((tx["txid"], int(out["n"]), sats))
    for order, (txid, index) in zip(orders, outputs, strict=True):
        if paid.get(order["to"]) != [(txid, index, order["sats"])]:
            raise AssertionError(f"payout {order['id']}: on chain {paid.get(order['to'])}, "
                                 f"the run returned {txid}:{index} of {order['sats']} sats")
    return len({txid for txid, _ in outputs})


def check_reservations(app: Any) -> None:
    """No outpoint reserved twice; no coin still held by a finished intent."""
    import sqlalchemy as sa

    from chainflow.storage.schema import reservations, submissions

    with app.engine.begin() as conn:
        owners = Counter(r.outpoint for r in conn.execute(sa.select(reservations.c.outpoint)))
        twice = [op for op, count in owners.items() if count > 1]
        held = conn.execute(sa.select(sa.func.count()).select_from(reservations.join(
            submissions, submissions.c.id == reservations.c.submission_id)).where(
            reservations.c.spent_at_block.is_(None), submissions.c.state == "final")).scalar()
    if twice or held:
        raise AssertionError(f"reservations: {len(twice)} outpoint(s) reserved twice, {held} held by final intents")


# --- tracker cost per head ------------------------------------------------------------


def heads_arm(node: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """RPC per new block with ``pending`` payouts in the mempool."""
    from chainflow.chain.tracker import Tracker

    n, heads = spec["pending"], spec["heads"]
    seed = secrets.token_bytes(16)
    btc = chain_for(node, seed)
    asyncio.run(fund_coins(node, btc, n + heads, COIN_SATS))
    # the re-broadcast pass over payouts unseen for rebroadcast_blocks is bounded apart
    # (TrackerConfig.stuck_batch per head); kept out of these heads, as in `tracker`
    app = payout_app(database_url(spec), btc, False, rebroadcast_blocks=heads + 10, bump_blocks=heads + 10)
    orders = [{"id": i, "to": address, "sats": SATS + i} for i, address in enumerate(payees(node.network, n + heads))]

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        worker = asyncio.create_task(app.worker(concurrency=128, track=False).run(stop))
        handles = [await app.astart("payout", o, idempotency_key=f"order:{o['id']}") for o in orders]
        txids = await broadcast_all(app, len(orders))
        if sorted(node.mempool()) != sorted(txids.values()):
            raise AssertionError(f"{len(node.mempool())} transactions in the mempool, {len(txids)} payouts signed")
        follower = chain_for(node, seed)  # the tracker's own adapter: its RPC count is the tracker's
        tracker = Tracker(app.database, app.clock, follower, "bench", app.tracker_config)
        await tracker.iteration()  # first contact: takes the lease, stores the starting window
        per_head: list[int] = []
        requests: list[int] = []
        cpu: list[float] = []
        for order in orders[n:]:
            mine_only(node, txids[f"payout:{order['id']}"])
            before = follower.rpc.calls
            c0 = time.process_time()
            stats = await tracker.iteration()
            cpu.append((time.process_time() - c0) * 1000)
            requests.append(follower.rpc.calls - before)
            assert stats is not None and stats.new_blocks == 1 and stats.matched == 1, stats
            per_head.append(stats.rpc_calls)
        still = len(node.mempool())
        stop.set()
        await worker
        await follower.aclose()
        await btc.aclose()
        del handles
        return {"pending": n, "still_pending": still, "calls_per_head": statistics.median(per_head),
                "calls_max": max(per_head), "requests_per_head": statistics.median(requests),
                "requests_max": max(requests), "cpu_ms": statistics.median(cpu)}

    result = asyncio.run(main())
    if result["still_pending"] != n:
        raise AssertionError(f"{result['still_pending']} payouts left in the mempool, expected {n}")
    app.engine.dispose()
    return result


async def broadcast_all(app: Any, n: int, timeout: float = 300.0) -> dict[str, str]:
    """Wait until ``n`` payouts are broadcast; their txids by idempotency key."""
    import sqlalchemy as sa

    from chainflow.storage.schema import submissions, tx_attempts

    query = sa.select(submissions.c.idempotency_key, tx_attempts.c.tx_hash).join(
        tx_attempts, tx_attempts.c.submission_id == submissions.c.id).where(submissions.c.state == "broadcast")
    end = time.monotonic() + timeout
    while True:
        with app.engine.begin() as conn:
            rows = {r.idempotency_key: r.tx_hash for r in conn.execute(query)}
        if len(rows) >= n:
            return rows
        if time.monotonic() > end:
            raise AssertionError(f"only {len(rows)} of {n} payouts broadcast after {timeout:.0f}s")
        await asyncio.sleep(0.2)


def mine_only(node: Any, txid: str) -> None:
    """One block holding ``txid`` and nothing else from the mempool."""
    coinbase = payees(node.network, 1)[0]
    node.rpc("generateblock", coinbase, [txid])


# --- the harness ------------------------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    from devnet import RegtestNode

    with RegtestNode() as node:
        if spec["kind"] == "heads":
            return heads_arm(node, spec)
        if spec["peer"] == "naive":
            return naive(node, spec["payouts"], spec["block_ms"])
        return chainflow_arm(node, spec)


def run(opts: Options, command: str) -> str:
    env = environment(opts)
    n = QUICK["payouts"] if opts.quick else PAYOUTS
    n_naive = QUICK["naive"] if opts.quick else NAIVE_PAYOUTS
    block_ms = QUICK["block_ms"] if opts.quick else BLOCK_MS
    pending = QUICK_PENDING if opts.quick else PENDING
    heads = QUICK["heads"] if opts.quick else HEADS
    peers = [p for p in PEERS if opts.wants(p)]
    throughput = {(b, p): Figure() for b in opts.backends for p in peers}
    per_head = {(b, k): Figure() for b in opts.backends for k in pending}
    for rep in range(1, opts.reps + 1):
        for backend in opts.backends:
            for peer in peers:
                # the naive loop has no database: it runs once per repetition, its figure shared
                if peer == "naive" and backend != opts.backends[0]:
                    continue
                spec: dict[str, Any] = {"kind": "throughput", "peer": peer, "block_ms": block_ms,
                        "payouts": n_naive if peer == "naive" else n, "backend": None if peer == "naive" else backend}
                r = run_on_database("btc_payouts", spec, spec["backend"], opts)
                if failed(r, [throughput[(backend, peer)]], f"rep {rep} {backend} {peer}"):
                    continue
                throughput[(backend, peer)].values.append(r["per_s"])
                throughput[(backend, peer)].raw.append(r)
                log(f"  rep {rep} {backend} {peer}: {r['payouts']} payouts in {r['elapsed']:.1f}s = "
                    f"{r['per_s']:.2f}/s in {r['txs']} txs")
            for k in pending:
                r = run_on_database("btc_payouts", {"kind": "heads", "pending": k, "heads": heads, "backend": backend},
                                    backend, opts)
                if failed(r, [per_head[(backend, k)]], f"rep {rep} {backend} pending={k}"):
                    continue
                per_head[(backend, k)].values.append(r["calls_per_head"])
                per_head[(backend, k)].raw.append(r)
                log(f"  rep {rep} {backend} pending={k}: {r['calls_per_head']} adapter calls/head "
                    f"({r['requests_per_head']} node requests, {r['cpu_ms']:.1f} CPU ms)")
    return report(opts, env, command, throughput, per_head, peers, pending,
                  {"payouts": n, "naive": n_naive, "block_ms": block_ms, "heads": heads})


def report(opts: Options, env: dict[str, Any], command: str, throughput: dict[tuple[str, str], Figure],
           per_head: dict[tuple[str, int], Figure], peers: list[str], pending: list[int],
           sizes: dict[str, int]) -> str:
    naive_fig = throughput.get((opts.backends[0], "naive"), Figure(problem="not run"))
    label = {"naive": f"naive: node wallet `sendtoaddress` + wait for 1 confirmation ({sizes['naive']} payouts)",
             "batched": f"chainflow, batching on (`cf.Batching()`, ≤ 50 per tx; {sizes['payouts']} payouts)",
             "unbatched": f"chainflow, batching off (one tx per payout; {sizes['payouts']} payouts)"}
    out = [f"## btc_payouts: {TITLE}", "", environment_markdown(env, command),
           f"- **Node:** {node_description()}",
           f"- **Repetitions:** {opts.reps}, each figure a fresh process, regtest node and database; a miner "
           f"thread mines a block every {sizes['block_ms']} ms during both arms", "",
           "| backend | peer | payouts/s | transactions on chain | chainflow / naive |", "|---|---|---|---|---|"]
    for backend in opts.backends:
        for peer in peers:
            fig = naive_fig if peer == "naive" else throughput[(backend, peer)]
            txs = Figure([r["txs"] for r in fig.raw]) if fig.raw else Figure(problem=fig.problem)
            vs = "—" if peer == "naive" else ratio(fig, naive_fig)
            out.append(f"| {backend} | {label[peer]} | {fig.cell('{:.2f}')} | {txs.cell('{:.0f}')} | {vs} |")
    out += ["", "Target: chainflow batched ≥ 5× the naive loop.  After every chainflow repetition the chain is "
            "read back (each payee paid by exactly one output of its exact amount, where its run says) and the "
            "reservations checked (no outpoint reserved twice, none held by a finished intent).  The naive loop "
            "has no database: it runs once per repetition and its figure is shared by both backends' ratios.", "",
            f"### Tracker cost per new block with N payouts pending in the mempool ({sizes['heads']} heads, "
            "median; max in brackets)", "",
            "| backend | pending payouts | adapter calls per head (`HeadStats.rpc_calls`) | node JSON-RPC requests "
            "per head | tracker CPU ms per head |", "|---|---|---|---|---|"]
    for backend in opts.backends:
        for k in pending:
            fig = per_head[(backend, k)]
            if not fig.raw:
                out.append(f"| {backend} | {k:,} | {fig.cell()} | — | — |")
                continue
            req = Figure([r["requests_per_head"] for r in fig.raw])
            cpu = Figure([r["cpu_ms"] for r in fig.raw])
            most = max(r["calls_max"] for r in fig.raw)
            most_req = max(r["requests_max"] for r in fig.raw)
            out.append(f"| {backend} | {k:,} | {fig.cell('{:.0f}')} [{most}] | {req.cell('{:.0f}')} [{most_req}] | "
                       f"{cpu.cell('{:.1f}')} |")
    out += ["", "Each head is a block holding one more payout of ours (so the match and receipt path runs) and "
            "none of the N pending ones, which stay in the mempool throughout (checked).  Payouts unseen for "
            "`rebroadcast_blocks` heads get the re-broadcast / fee-bump pass, which is bounded apart "
            "(`TrackerConfig.stuck_batch`, 32 per head) and kept out of these heads, as in the `tracker` "
            "benchmark.  Target: calls per head constant in N.", ""]
    return "\n".join(out)


def node_description() -> str:
    import subprocess

    from devnet.regtest import node_binary

    binary = node_binary()
    if binary is None:
        return "none"
    version = subprocess.run([str(binary.path), "-version"], capture_output=True, text=True, timeout=30,
                             check=False).stdout.strip().splitlines()
    return f"{binary.path} ({version[0] if version else binary.flavor.name}), regtest"
