"""Benchmark 2, on-chain throughput: mint workflows end to end on anvil, one sender.

Every peer runs against a fresh anvil mining a block every second (a chain with block
times, not instant automine, is what a payment service faces):

naive      a web3.py loop: build, sign, send, wait for the receipt, one mint at a time
pipelined  no database at all: sign locally with increasing nonces, send concurrently
           on a keep-alive session, wait for every receipt (polled in JSON-RPC batches):
           the ceiling a sender that gives up durability reaches
chainflow  N mint workflows (``ctx.submit`` with ``Confirmations(1)``), started
           concurrently (as the pipelined sender sends concurrently), through one
           worker, on SQLite and on Postgres; and through two worker processes sharing
           the one sender on Postgres

Figure: mints per second, first start (first signature for the pipelined sender) to
last completion (last receipt).  After every chainflow run the chain is scanned:
exactly one mined transaction per idempotency key and contiguous nonces, or the
repetition fails.  Targets: chainflow ≥ 5× the naive loop, ≥ 0.6× the pipelined sender.

Per mint, read back from what the engine records anyway (no timing added to the hot
path): latency start → signed bytes committed → broadcast → included → final, and the
costs of the run: database transactions (group-commit batches, other write and read
transactions), JSON-RPC requests, signing time and the process's CPU.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .harness import (
    Figure,
    Options,
    environment,
    environment_markdown,
    failed,
    log,
    pg_problem,
    ratio,
    run_on_database,
)

TITLE = "on-chain throughput: mint workflows on anvil (1 s blocks), one sender (mints/s)"
CHAINFLOW_MINTS, NAIVE_MINTS = 1_000, 20
QUICK = (40, 3)
CONCURRENCY = 512  # each worker's run slots (a parked run holds none)
# (figure key, peer, backend, worker processes, label)
FIGURES = [
    ("naive", "naive", None, 0, "naive web3.py loop (sign, send, wait, one at a time)"),
    ("pipelined", "pipelined", None, 0, "pipelined, non-durable (sign locally, send concurrently, no database)"),
    ("chainflow_sqlite", "chainflow", "sqlite", 1, "chainflow, SQLite, 1 worker"),
    ("chainflow_postgres", "chainflow", "postgres", 1, "chainflow, Postgres, 1 worker"),
    ("chainflow_postgres_2w", "chainflow", "postgres", 2, "chainflow, Postgres, 2 worker processes, one sender"),
]
# the moments of a mint read back from the database, in order
STAGES = ("signed", "broadcast", "mined", "included", "final")


def available() -> str | None:
    try:
        from devnet.anvil import anvil_binary

        anvil_binary()
    except Exception as exc:  # noqa: BLE001
        return f"not available: {exc}"
    return None


# --- peers ------------------------------------------------------------------------------


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


async def _pipelined(net: Any, key: str, token_address: str, n: int) -> float:
    """Its best configuration: gas and fees priced once (every mint has the same shape),
    each transaction sent as soon as it is signed on a pool of keep-alive connections,
    receipts polled every 50 ms for everything outstanding in one JSON-RPC batch."""
    import aiohttp
    from eth_account import Account
    from web3 import Web3

    from devnet import token_contract

    token = token_contract(Web3(), token_address)
    account = Account.from_key(key)
    me = account.address
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        async def rpc(*calls: tuple[str, list[Any]]) -> list[Any]:
            body = [{"jsonrpc": "2.0", "id": i, "method": m, "params": p} for i, (m, p) in enumerate(calls)]
            async with http.post(net.rpc_url, json=body) as response:
                answers = sorted(await response.json(), key=lambda a: a["id"])
            for a in answers:
                if "error" in a:
                    raise RuntimeError(f"{calls[a['id']][0]}: {a['error']}")
            return [a["result"] for a in answers]

        t0 = time.perf_counter()
        sample = token.functions.mint(me, n)._encode_transaction_data()
        chain_id, nonce, gas, fee_history = await rpc(
            ("eth_chainId", []), ("eth_getTransactionCount", [me, "pending"]),
            ("eth_estimateGas", [{"from": me, "to": token_address, "data": sample}]),
            ("eth_feeHistory", ["0xa", "latest", [50]]))
        tip = 10**9
        base = int(fee_history["baseFeePerGas"][-1], 16)
        common = {"to": token_address, "value": 0, "gas": int(gas, 16) * 6 // 5, "chainId": int(chain_id, 16),
                  "type": 2, "maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}
        first = int(nonce, 16)
        sends = []
        hashes = []
        for i in range(n):
            signed = account.sign_transaction(
                {**common, "nonce": first + i, "data": token.functions.mint(me, i + 1)._encode_transaction_data()})
            hashes.append("0x" + bytes(signed.hash).hex())
            sends.append(asyncio.create_task(rpc(("eth_sendRawTransaction", ["0x" + signed.raw_transaction.hex()]))))
            if i % 16 == 15:
                await asyncio.sleep(0)  # let the sends go out while signing the rest
        await asyncio.gather(*sends)
        outstanding = set(hashes)
        while outstanding:
            await asyncio.sleep(0.05)
            batch = sorted(outstanding)
            for tx_hash, receipt in zip(batch, await rpc(*(("eth_getTransactionReceipt", [h]) for h in batch))):
                if receipt is not None and receipt.get("blockHash"):
                    if int(receipt["status"], 16) != 1:
                        raise AssertionError(f"{tx_hash} reverted")
                    outstanding.discard(tx_hash)
        return time.perf_counter() - t0


def _url(backend: str, db: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{os.path.join(db, 'onchain.db')}"
    return db.replace("postgresql://", "postgresql+psycopg://", 1)


def _app(url: str, rpc_url: str, key: str, token_address: str) -> tuple[Any, Any]:
    """The mint app, as every worker process builds it."""
    from web3 import Web3

    import chainflow as cf
    from adapters.evm import EvmChain, LocalSigner
    from devnet import token_contract

    token = token_contract(Web3(), token_address)
    chain = EvmChain("anvil", rpc_url, LocalSigner.from_key(key))
    app = cf.Chainflow(url, chains=[chain], tracker=cf.TrackerConfig(poll_interval=0.1))

    @app.workflow("mint")
    async def mint(ctx: cf.Context, i: int) -> str:
        rcpt = await ctx.submit("mint", chain="anvil", tx=token.functions.mint(chain.sender(), i + 1),
                                idempotency_key=f"mint-{i}", finality=cf.Confirmations(1))
        return rcpt.tx_hash

    return app, chain


def _second_worker(url: str, rpc_url: str, key: str, token_address: str, ready: Any, stop: Any) -> None:
    """Another worker process on the same database and sender (spawned)."""
    from chainflow.runtime.worker import freeze_heap

    app, _ = _app(url, rpc_url, key, token_address)

    async def main() -> None:
        done = asyncio.Event()
        worker = asyncio.create_task(app.worker(concurrency=CONCURRENCY).run(done))
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        done.set()
        await worker

    freeze_heap()
    asyncio.run(main())


class _Counts:
    """What the run cost, counted in this process: group-commit batches (each one
    durable commit), other write and read transactions, JSON-RPC requests, signing."""

    def __init__(self, chain: Any) -> None:
        self.chain = chain
        self.batches = self.tx = self.read = self.http = 0
        self.sign_s = 0.0

    @contextmanager
    def counting(self) -> Iterator[None]:
        from adapters.evm.rpc import _Http
        from chainflow.runtime.committer import Committer
        from chainflow.storage.database import Database

        originals = (Committer._commit_together, Database.tx, Database.read, _Http._post)
        signer, sign = self.chain.signer, type(self.chain.signer).sign_transaction
        counts = self

        def commit_together(committer: Any, batch: Any) -> Any:
            counts.batches += 1
            return originals[0](committer, batch)

        def tx(db: Any, fn: Any, *args: Any) -> Any:
            counts.tx += 1
            return originals[1](db, fn, *args)

        def read(db: Any, fn: Any, *args: Any) -> Any:
            counts.read += 1
            return originals[2](db, fn, *args)

        async def post(http: Any, *args: Any) -> Any:
            counts.http += 1
            return await originals[3](http, *args)

        class Timed:
            address = signer.address

            def sign_transaction(self, tx: dict[str, Any]) -> Any:
                t = time.perf_counter()
                try:
                    return sign(signer, tx)
                finally:
                    counts.sign_s += time.perf_counter() - t

        patched: list[tuple[Any, str, Any]] = [(Committer, "_commit_together", commit_together), (Database, "tx", tx),
                                              (Database, "read", read), (_Http, "_post", post)]
        for cls, name, fn in patched:
            setattr(cls, name, fn)
        self.chain.signer = Timed()
        try:
            yield
        finally:
            for (cls, name, _), original in zip(patched, originals):
                setattr(cls, name, original)
            self.chain.signer = signer


def _chainflow(spec: dict[str, Any], net: Any, key: str, token_address: str) -> dict[str, Any]:
    from chainflow.runtime.worker import freeze_heap

    n, workers, width = spec["mints"], spec.get("workers", 1), spec.get("concurrency", CONCURRENCY)
    url = _url(spec["backend"], spec["db"])
    app, chain = _app(url, net.rpc_url, key, token_address)
    app.ensure_schema()
    counts = _Counts(chain)
    helper, stop = None, None
    if workers == 2:
        ctx = multiprocessing.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        helper = ctx.Process(target=_second_worker, args=(url, net.rpc_url, key, token_address, ready, stop))
        helper.start()
        if not ready.wait(60):
            raise RuntimeError("the second worker process did not start")

    async def main() -> tuple[float, float, int]:
        done = asyncio.Event()
        worker = asyncio.create_task(app.worker(concurrency=width).run(done))
        await asyncio.sleep(0.3)
        rpc0 = chain.rpc.calls
        cpu0, t0 = time.process_time(), time.perf_counter()
        with counts.counting():
            await asyncio.gather(*(app.astart("mint", i) for i in range(n)))
            # every 50 ms, as the pipelined sender polls its receipts: runs finished by the
            # other worker process wake no awaiter in this one
            while sum((await app.aread(_statuses)).values()) < n:
                await asyncio.sleep(0.05)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        statuses = await app.aread(_statuses)
        if statuses != {"completed": n}:
            raise AssertionError(f"mint runs did not all complete: {statuses}")
        rpc = chain.rpc.calls - rpc0
        done.set()
        await worker
        return elapsed, cpu, rpc

    freeze_heap()  # as every worker process does (Chainflow.run_worker)
    try:
        if spec.get("profile"):
            from pyinstrument import Profiler

            profiler = Profiler(async_mode="enabled")
            profiler.start()
            try:
                elapsed, cpu, rpc = asyncio.run(main())
            finally:
                profiler.stop()
                with open(spec["profile"], "w") as fh:
                    fh.write(profiler.output_text(show_all=False) if spec["profile"].endswith(".txt")
                             else profiler.output_html())
        else:
            elapsed, cpu, rpc = asyncio.run(main())
    finally:
        if helper is not None and stop is not None:
            stop.set()
            helper.join(60)
    latency = _latencies(app, net)
    app.engine.dispose()
    return {"elapsed": elapsed, "cpu": cpu, "latency": latency,
            "per_mint": {"batches": counts.batches / n, "tx": counts.tx / n, "read": counts.read / n,
                         "rpc": rpc / n, "http": counts.http / n, "sign_ms": counts.sign_s * 1000 / n, "cpu_ms": cpu * 1000 / n},
            "note": f"{workers} worker process(es), concurrency {width} each"
                    + ("; counts are the first process's only" if workers > 1 else "")}


def _statuses(conn: Any) -> dict[str, int]:
    """How many mint runs have ended, by status."""
    import sqlalchemy as sa

    from chainflow.states import TERMINAL
    from chainflow.storage.schema import runs

    return {status: count for status, count in conn.execute(
        sa.select(runs.c.status, sa.func.count()).where(runs.c.status.in_(TERMINAL)).group_by(runs.c.status))}


def _latencies(app: Any, net: Any) -> dict[str, dict[str, float]]:
    """Per mint, seconds from its run's creation to: its first signed bytes recorded
    (the attempt row, committed right after), its last broadcast, the timestamp of the
    block that holds it (the chain's clock, whole seconds), the tracker recording it
    included (with Confirmations(1) the same commit makes it final), its run completed
    (the workflow journaled the receipt).  p50 and p99 of each."""
    import sqlalchemy as sa

    from chainflow.storage.schema import runs, submissions, tx_attempts

    first_attempt = (sa.select(tx_attempts.c.submission_id, sa.func.min(tx_attempts.c.created_at).label("signed"))
                     .group_by(tx_attempts.c.submission_id).subquery())
    q = (sa.select(runs.c.created_at, first_attempt.c.signed, submissions.c.last_broadcast_at,
                   submissions.c.block_number, submissions.c.updated_at, runs.c.updated_at.label("final"))
         .join(submissions, submissions.c.run_id == runs.c.id)
         .join(first_attempt, first_attempt.c.submission_id == submissions.c.id))
    with app.engine.connect() as conn:
        rows = [list(r) for r in conn.execute(q)]
    mined = {number: int(net.rpc("eth_getBlockByNumber", hex(number), False)["timestamp"], 16)
             for number in {r[3] for r in rows}}
    for r in rows:
        r[3] = mined[r[3]]
    out = {}
    for i, stage in enumerate(STAGES, start=1):
        # no broadcast time when the receipt was recorded before the broadcast was
        values = sorted(r[i] - r[0] for r in rows if r[i] is not None)
        out[stage] = {"p50": statistics.median(values), "p99": values[min(len(values) - 1, int(len(values) * 0.99))]}
    return out


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
        result: dict[str, Any]
        if spec["peer"] == "naive":
            result = {"elapsed": _naive(net, acct.private_key, token_address, n)}
        elif spec["peer"] == "pipelined":
            result = {"elapsed": asyncio.run(_pipelined(net, acct.private_key, token_address, n))}
            _exactly_once(net, token_address, acct.address, n)
        else:
            result = _chainflow(spec, net, acct.private_key, token_address)
            _exactly_once(net, token_address, acct.address, n)
        return result | {"mints": n, "per_s": n / result["elapsed"]}


# --- parent side ----------------------------------------------------------------------


def run(opts: Options, command: str) -> str:
    env = environment(opts)
    problems: dict[str, str] = {}
    if "postgres" in opts.backends:
        problem = pg_problem(opts.pg_admin_url)
        if problem:
            problems["postgres"] = f"skipped: Postgres unreachable ({problem})"
    chosen = [f for f in FIGURES if (f[2] is None or f[2] in opts.backends) and opts.wants(f[0])]
    sizes = {f[0]: (QUICK[1] if opts.quick else NAIVE_MINTS) if f[1] == "naive"
             else (QUICK[0] if opts.quick else CHAINFLOW_MINTS) for f in chosen}
    figs = {f[0]: Figure() for f in chosen}
    for rep in range(1, opts.reps + 1):
        for key, peer, backend, workers, _label in chosen:
            if backend in problems:
                figs[key].problem = problems[backend]
                continue
            spec: dict[str, Any] = {"peer": peer, "mints": sizes[key], "backend": backend, "workers": workers}
            if opts.profile_dir and peer == "chainflow":
                spec["profile"] = os.path.join(opts.profile_dir, f"onchain_{key}_rep{rep}.html")
            r = run_on_database("onchain", spec, backend, opts, key="db")
            if failed(r, [figs[key]], f"rep {rep} {key}"):
                continue
            figs[key].values.append(r["per_s"])
            figs[key].raw.append(r | {"rep": rep})
            extra = f", per mint {json.dumps(r['per_mint'])}" if "per_mint" in r else ""
            log(f"  rep {rep} {key}: {sizes[key]} mints in {r['elapsed']:.2f}s = {r['per_s']:.2f}/s{extra}")
    return _render(opts, env, command, chosen, sizes, figs)


def _median_of(raw: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in raw:
        v: Any = r
        for p in path:
            v = v[p]
        values.append(v)
    return statistics.median(values)


def _render(opts: Options, env: dict[str, Any], command: str, chosen: list[tuple[str, str, str | None, int, str]],
            sizes: dict[str, int], figs: dict[str, Figure]) -> str:
    out = [f"## onchain: {TITLE}", "", environment_markdown(env, command),
           f"- **Repetitions:** {opts.reps}, each a fresh process, a fresh anvil (`--block-time 1`) and a fresh "
           "database" + (" (**--profile: run under pyinstrument, figures inflated**)" if opts.profile_dir else ""),
           "", "| peer | mints per run | mints/s | / naive | / pipelined |", "|---|---|---|---|---|"]
    for key, _peer, _backend, _workers, label in chosen:
        vs = [ratio(figs[key], figs[base]) if base in figs and key != base else "" for base in ("naive", "pipelined")]
        out.append(f"| {label} | {sizes[key]} | {figs[key].cell('{:.2f}')} | {vs[0]} | {vs[1]} |")
    out += ["", "Targets: chainflow ≥ 5× the naive loop and ≥ 0.6× the pipelined sender. Starts are issued "
            f"concurrently; each worker runs {CONCURRENCY} runs at a time. After every chainflow and pipelined "
            "repetition the chain is scanned: each key minted exactly once, sender nonces contiguous.", ""]
    measured = [(key, label) for key, peer, *_rest, label in chosen if peer == "chainflow" and figs[key].raw]
    if measured:
        out += ["Latency per mint, seconds from the run's start (p50 / p99 over the mints; the median of those "
                "over repetitions), read back from the rows the engine writes: *signed* the first signed "
                "attempt's row (committed with it), *broadcast* the submission's last broadcast, *mined* the "
                "timestamp of the block holding it (the chain's clock, whole seconds, so up to 1 s early), "
                "*included* the tracker's commit that recorded the receipt (with `Confirmations(1)` the same "
                "commit makes it final), *final* the run completed (receipt journaled).", "",
                "| peer | " + " | ".join(STAGES) + " |", "|---|" + "---|" * len(STAGES)]
        for key, label in measured:
            cells = [f"{_median_of(figs[key].raw, 'latency', s, 'p50'):.2f} / "
                     f"{_median_of(figs[key].raw, 'latency', s, 'p99'):.2f}" for s in STAGES]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out += ["", "Cost per mint (medians; counted in the process that starts the runs, with a worker on its "
                "loop): group-commit batches (each one durable commit, shared by every run writing in that "
                "loop round), other write transactions (`Database.tx`), read transactions, JSON-RPC requests "
                "(the adapter's counter, the tracker's included) and the HTTP requests that carried them "
                "(concurrent calls share a JSON-RPC batch), signing time, process CPU.", "",
                "| peer | commit batches | other writes | reads | RPC calls | HTTP requests | signing ms | CPU ms |",
                "|---|---|---|---|---|---|---|---|"]
        for key, label in measured:
            c = {k: _median_of(figs[key].raw, "per_mint", k) if all(k in r["per_mint"] for r in figs[key].raw)
                 else math.nan for k in ("batches", "tx", "read", "rpc", "http", "sign_ms", "cpu_ms")}
            out.append(f"| {label} | {c['batches']:.2f} | {c['tx']:.2f} | {c['read']:.2f} | {c['rpc']:.2f} | "
                       f"{c['http']:.2f} | {c['sign_ms']:.2f} | {c['cpu_ms']:.2f} |")
        out.append("")
    raw = [f"| {key} | {r['rep']} | {r['elapsed']:.2f} | {r['per_s']:.2f} | {r.get('note', '')} |"
           for key, fig in figs.items() for r in fig.raw]
    if raw:
        out += ["<details><summary>raw repetitions</summary>", "", "| figure | rep | seconds | mints/s | note |",
                "|---|---|---|---|---|", *raw, "", "</details>", ""]
    return "\n".join(out)
