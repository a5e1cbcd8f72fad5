"""Benchmark 3, tracker scale: the cost of one new head with 10 / 1,000 / 10,000 pending
tracked transactions.

Each repetition (a fresh process, a fresh SQLite or Postgres database, a fresh anvil;
the in-process EVM only when anvil is missing) inserts N synthetic pending submissions
with one signed attempt each, then mines heads one at a time, each holding one real
transaction of ours, and runs one tracker iteration per head (``Tracker.iteration()``,
what the tracker loop does every poll).  The first ``WARMUP_HEADS`` after the start are
reported apart: they pay one-time costs a tracker running for days does not (SQL
compilation, psycopg preparing a statement after its fifth execution, the
interpreter specialising hot code); the figures are over the ``HEADS`` after them.
Figures: JSON-RPC requests per head and the
HTTP exchanges they took (counted by the adapter's RPC client, which every call goes
through, not just the tracker's own bookkeeping), CPU ms and wall ms per head, and SQL
statements and transactions per head (counted on a few more heads after the timed
ones, so the counting listener costs the timed heads nothing).  The chain is
configured as in production (a node URL: the adapter's keep-alive HTTP session).
Targets: RPC calls constant in N; CPU ≤ 3 ms at 10,000 (issue #18).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import time
from typing import Any

from .harness import (
    Figure,
    Options,
    environment,
    environment_markdown,
    failed,
    log,
    pg_problem,
    run_on_database,
)

TITLE = "tracker scale: cost per new head vs pending tracked transactions"
SIZES = [10, 1_000, 10_000]
QUICK_SIZES = [10, 200]
WARMUP_HEADS = 20  # timed, reported in a column of their own
HEADS = 40  # after the warm-up: the steady state the targets are about
COUNTED_HEADS = 5  # after the timed ones: SQL statements and transactions per head


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


class _SqlCounter:
    """SQL statements and transactions the engine runs while ``counting`` is set: around
    the iteration only, not the inserts that make the next head."""

    def __init__(self, engine: Any) -> None:
        import sqlalchemy as sa

        self.engine, self.counting = engine, False
        self.statements = self.transactions = 0
        self._listeners = [("before_cursor_execute", self._statement), ("begin", self._begin)]
        for name, fn in self._listeners:
            sa.event.listen(engine, name, fn)

    def _statement(self, *args: Any) -> None:
        self.statements += self.counting

    def _begin(self, *args: Any) -> None:
        self.transactions += self.counting

    def close(self) -> None:
        import sqlalchemy as sa

        for name, fn in self._listeners:
            sa.event.remove(self.engine, name, fn)


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import chainflow as cf
    from adapters.evm import EvmChain, LocalSigner
    from chainflow.chain import chainstore
    from chainflow.chain.tracker import Tracker
    from devnet import Anvil, InProcessEVM
    from devnet.anvil import AnvilNotInstalled, anvil_binary

    n = spec["pending"]
    if spec["backend"] == "postgres":
        url = spec["target"].replace("postgresql://", "postgresql+psycopg://", 1)
    else:
        url = f"sqlite:///{os.path.join(spec['target'], 'tracker.db')}"
    try:  # a separate process, so the node's own CPU is not counted as the tracker's
        anvil_binary()
        devnet: Any = Anvil()
    except AnvilNotInstalled:
        devnet = InProcessEVM()
    with devnet as net:
        key = net.accounts()[0].private_key
        chain = EvmChain("bench", net.rpc_url, LocalSigner.from_key(key))
        app = cf.Chainflow(url, chains=[chain])
        app.ensure_schema()
        net.set_automine(False)

        async def main() -> dict[str, Any]:
            tracker = Tracker(app.database, app.clock, chain, "bench")
            head = (await chain.head()).number
            await asyncio.to_thread(_seed, app, "bench", chain.sender(), n, head)
            await tracker.iteration()  # first contact: takes the lease, stores the starting window
            nonce = await chain.pending_nonce(chain.sender())
            request = await chain.estimate(chain.prepare({"to": chain.sender(), "value": 0}))
            first, cpu, wall, rpc, exchanges = [], [], [], [], []
            sql = _SqlCounter(app.engine)
            for i in range(WARMUP_HEADS + HEADS + COUNTED_HEADS):
                # one real tracked tx per head, so the match path (receipt fetch) runs too
                signed = await chain.sign(request, nonce + i, None)
                sub_id = await app.adb(chainstore.open_gap_fill, "bench", chain.sender(), nonce + i, "{}", time.time())
                await app.adb(chainstore.add_attempt, sub_id, "bench", signed, time.time())
                await app.adb(chainstore.mark_broadcast(sub_id, time.time()))
                await chain.broadcast(signed.raw)
                await asyncio.to_thread(net.mine, 1)
                calls, exchanged = chain.rpc.calls, chain.rpc.exchanges
                sql.counting = i >= WARMUP_HEADS + HEADS
                c0, w0 = time.process_time(), time.perf_counter()
                stats = await tracker.iteration()  # what the tracker loop does each poll
                sql.counting = False
                if i < WARMUP_HEADS:
                    first.append((time.process_time() - c0) * 1000)
                elif i < WARMUP_HEADS + HEADS:
                    cpu.append((time.process_time() - c0) * 1000)
                    wall.append((time.perf_counter() - w0) * 1000)
                rpc.append(chain.rpc.calls - calls)
                exchanges.append(chain.rpc.exchanges - exchanged)
                assert stats is not None and stats.new_blocks == 1 and stats.matched == 1, stats
            sql.close()
            await chain.aclose()
            return {"rpc_per_head": statistics.median(rpc), "rpc_max": max(rpc),
                    "exchanges_per_head": statistics.median(exchanges),
                    "statements_per_head": sql.statements / COUNTED_HEADS,
                    "transactions_per_head": sql.transactions / COUNTED_HEADS,
                    "cpu_ms": statistics.median(cpu), "wall_ms": statistics.median(wall),
                    "cpu_first_ms": statistics.median(first)}

        return asyncio.run(main())


MEASURES = {"rpc": "rpc_per_head", "exchanges": "exchanges_per_head", "statements": "statements_per_head",
            "transactions": "transactions_per_head", "cpu": "cpu_ms", "wall": "wall_ms", "first": "cpu_first_ms"}


def _count(fig: Figure) -> str:
    """A count's cell: the number alone when every repetition counted the same."""
    if fig.ok and min(fig.values) == max(fig.values):
        return f"{fig.values[0]:.0f}"
    return fig.cell("{:.0f}")


def run(opts: Options, command: str) -> str:
    env = environment(opts)
    sizes = QUICK_SIZES if opts.quick else SIZES
    skipped: dict[str, str] = {}
    if "postgres" in opts.backends and (problem := pg_problem(opts.pg_admin_url)):
        skipped["postgres"] = f"skipped: Postgres unreachable ({problem})"
        log(f"  postgres: {skipped['postgres']}")
    backends = [b for b in opts.backends if b not in skipped]
    figs = {(b, n, m): Figure() for b in backends for n in sizes for m in MEASURES}
    for rep in range(1, opts.reps + 1):
        for backend in backends:
            for n in sizes:
                r = run_on_database("tracker", {"pending": n, "backend": backend}, backend, opts)
                if failed(r, (figs[(backend, n, m)] for m in MEASURES), f"rep {rep} {backend} pending={n}"):
                    continue
                for m, key in MEASURES.items():
                    figs[(backend, n, m)].values.append(r[key])
                log(f"  rep {rep} {backend} pending={n}: {r['rpc_per_head']} RPC/head in {r['exchanges_per_head']} "
                    f"exchanges, {r['statements_per_head']:.1f} SQL statements in {r['transactions_per_head']:.1f} "
                    f"transactions, {r['cpu_ms']:.2f} CPU ms ({r['cpu_first_ms']:.2f} in the first "
                    f"{WARMUP_HEADS} heads), {r['wall_ms']:.2f} wall ms")
    out = [f"## tracker: {TITLE}", "", environment_markdown(env, command),
           f"- **Repetitions:** {opts.reps}, each a fresh process, database and anvil; "
           f"the first {WARMUP_HEADS} heads after the start in a column of their own (one-time costs: SQL "
           f"compilation, statements prepared after their fifth run, the interpreter warming up), then the "
           f"median over the {HEADS} heads after them per repetition, then median and min–max over repetitions; "
           f"SQL counted over {COUNTED_HEADS} more heads", "",
           "| backend | pending tracked txs | JSON-RPC requests per head (HTTP exchanges) | SQL statements "
           f"(transactions) per head | CPU ms per head | CPU ms per head, first {WARMUP_HEADS} | "
           "wall ms per head |",
           "|---|---|---|---|---|---|---|"]
    for backend in backends:
        for n in sizes:
            f = {m: figs[(backend, n, m)] for m in MEASURES}
            out.append(f"| {backend} | {n:,} | {_count(f['rpc'])} ({_count(f['exchanges'])}) | "
                       f"{_count(f['statements'])} ({_count(f['transactions'])}) | "
                       f"{f['cpu'].cell('{:.2f}')} | {f['first'].cell('{:.2f}')} | {f['wall'].cell('{:.2f}')} |")
    out += ["", *(f"{line}." for line in skipped.values()),
            "Targets: requests per head constant in the number pending; CPU ≤ 3 ms per head at 10,000 "
            "(issue #18), in the steady state.", ""]
    return "\n".join(out)
