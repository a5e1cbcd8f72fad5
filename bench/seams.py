"""Benchmark 5, seams: each hand-written piece chainflow keeps for speed against the
standard-library or library piece it replaces.

* ``threads``: ``ThreadPool.run`` (a job tuple on a ``SimpleQueue``, one
  ``call_soon_threadsafe`` back) vs ``loop.run_in_executor`` on a ``ThreadPoolExecutor``
  of the same size, and ``threads.offload`` vs ``asyncio.to_thread`` (both carry the
  caller's context variables): one no-op sync call handed to a thread and awaited, as
  every sync step does.
* ``flag``: ``Flag`` vs ``asyncio.Event`` in the executor's wait loop: each round waits
  for "the run changed", "stop" and the workflow at once (``asyncio.wait``), the change
  arrives, the waiter is dropped and the flag cleared.  With an Event each wait is a
  task around ``event.wait()``.
* ``eager``: ``eager.start`` vs ``loop.create_task`` for a workflow that finishes
  without suspending (five async steps that return at once), started and awaited.
* ``rpc``: the adapter's JSON-RPC client (``adapters.evm.rpc.Rpc`` on a URL: aiohttp,
  raw JSON) vs web3's ``AsyncHTTPProvider`` through its request manager with no
  middleware (what ``Rpc`` does when handed a provider) and vs a plain
  ``Web3(HTTPProvider(url)).eth.block_number``: ``eth_blockNumber`` against a local anvil
  (the in-process EVM's HTTP server when anvil is missing).  The node runs in another
  process, so the client's CPU time per call is reported beside the wall time.

Each repetition of each seam is a fresh process; inside it the variants alternate in
rounds and each keeps its best round (timeit's convention: the least disturbed).
Figures are µs per operation; ratios are alternative / ours (above 1×: ours is faster).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .harness import Figure, Options, environment, environment_markdown, failed, log, ratio, run_child

TITLE = "hand-written pieces vs the standard-library or library alternative (µs per op, lower is better)"
ROUNDS = 5

# seam -> (ours, [(alternative, what it is)], operations per round, quick operations per round)
SEAMS: dict[str, tuple[str, list[tuple[str, str]], int, int]] = {
    "threads": ("ThreadPool.run", [("run_in_executor", "loop.run_in_executor(ThreadPoolExecutor)")], 5_000, 300),
    "offload": ("threads.offload", [("to_thread", "asyncio.to_thread")], 5_000, 300),
    "flag": ("Flag", [("asyncio.Event", "asyncio.Event + a task per wait")], 20_000, 1_000),
    "eager": ("eager.start", [("create_task", "loop.create_task")], 20_000, 1_000),
    "rpc": ("Rpc (aiohttp)", [("web3 async", "AsyncWeb3(AsyncHTTPProvider), no middleware"),
                              ("web3 sync", "Web3(HTTPProvider).eth.block_number")], 1_000, 50),
}


def available() -> str | None:
    try:
        import adapters.evm  # noqa: F401
        import devnet  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"not available: {exc}"
    return None


# --- the variants (child side) --------------------------------------------------------


def _noop() -> None:
    return None


async def _threads_ours(n: int) -> None:
    from chainflow.threads import ThreadPool

    pool = ThreadPool(4, "bench")
    try:
        for _ in range(n):
            await pool.run(_noop)
    finally:
        pool.shutdown(wait=True)


async def _threads_stdlib(n: int) -> None:
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(n):
            await loop.run_in_executor(pool, _noop)


async def _offload_ours(n: int) -> None:
    from chainflow.threads import offload

    for _ in range(n):
        await offload(_noop)


async def _offload_stdlib(n: int) -> None:
    for _ in range(n):
        await asyncio.to_thread(_noop)


async def _flag_ours(n: int) -> None:
    from chainflow.runtime.flag import Flag

    loop = asyncio.get_running_loop()
    changed, stop = Flag(), Flag()
    main = loop.create_future()  # the workflow, still running
    stop_wait = stop.future()
    for _ in range(n):
        waiter = changed.future()
        loop.call_soon(changed.set)  # a step commits
        await asyncio.wait({main, waiter, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        changed.clear()
    stop_wait.cancel()
    main.cancel()


async def _flag_stdlib(n: int) -> None:
    loop = asyncio.get_running_loop()
    changed, stop = asyncio.Event(), asyncio.Event()
    main = loop.create_future()
    stop_wait = asyncio.create_task(stop.wait())
    for _ in range(n):
        waiter = asyncio.create_task(changed.wait())
        loop.call_soon(changed.set)
        await asyncio.wait({main, waiter, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        changed.clear()
    stop_wait.cancel()
    main.cancel()


async def _step(i: int) -> int:
    return i


async def _workflow() -> int:
    total = 0
    for i in range(5):
        total += await _step(i)
    return total


async def _eager_ours(n: int) -> None:
    from chainflow.runtime import eager

    for _ in range(n):
        await eager.start(_workflow())


async def _eager_stdlib(n: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(n):
        await loop.create_task(_workflow())


def _measure(variants: dict[str, Callable[[int], Awaitable[None]]], n: int,
             close: Callable[[], Awaitable[None]] | None = None) -> dict[str, dict[str, float]]:
    """Best round per variant: wall and process-CPU µs per operation.  Every round runs
    on one event loop (aiohttp sessions are bound to theirs); ``close`` runs on it last."""
    best: dict[str, dict[str, float]] = {name: {"wall": float("inf"), "cpu": float("inf")} for name in variants}

    async def rounds() -> None:
        try:
            for fn in variants.values():  # warm-up: imports, thread start, connections
                await fn(max(1, n // 10))
            for _ in range(ROUNDS):
                for name, fn in variants.items():
                    c0, w0 = time.process_time(), time.perf_counter()
                    await fn(n)
                    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                    best[name]["wall"] = min(best[name]["wall"], wall / n * 1e6)
                    best[name]["cpu"] = min(best[name]["cpu"], cpu / n * 1e6)
        finally:
            if close is not None:
                await close()

    asyncio.run(rounds())
    return best


def _rpc(n: int) -> dict[str, Any]:
    from web3 import AsyncHTTPProvider, AsyncWeb3, HTTPProvider, Web3
    from web3.types import RPCEndpoint

    from adapters.evm.rpc import Rpc
    from devnet import Anvil, InProcessEVM
    from devnet.anvil import AnvilNotInstalled, anvil_binary

    try:
        anvil_binary()
        net: Any = Anvil()
        node = "anvil"
    except AnvilNotInstalled:
        net, node = InProcessEVM(), "in-process EVM"
    with net:
        url = net.rpc_url
        ours = Rpc(url, timeout=10.0)
        theirs = AsyncWeb3(AsyncHTTPProvider(url), middleware=[])
        sync = Web3(HTTPProvider(url))

        async def rpc_ours(k: int) -> None:
            for _ in range(k):
                await ours.call("eth_blockNumber")

        async def rpc_web3_async(k: int) -> None:
            for _ in range(k):
                await theirs.manager.coro_request(RPCEndpoint("eth_blockNumber"), [])

        async def rpc_web3_sync(k: int) -> None:  # blocking on purpose: what a plain web3 loop does
            for _ in range(k):
                sync.eth.block_number  # noqa: B018 - the property is the request

        async def close() -> None:
            await ours.aclose()
            await theirs.provider.disconnect()

        figures = _measure({"ours": rpc_ours, "web3 async": rpc_web3_async, "web3 sync": rpc_web3_sync}, n, close)
    return {"figures": figures, "node": node}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    seam, n = spec["seam"], spec["n"]
    if seam == "rpc":
        return _rpc(n)
    variants: dict[str, dict[str, Callable[[int], Awaitable[None]]]] = {
        "threads": {"ours": _threads_ours, "run_in_executor": _threads_stdlib},
        "offload": {"ours": _offload_ours, "to_thread": _offload_stdlib},
        "flag": {"ours": _flag_ours, "asyncio.Event": _flag_stdlib},
        "eager": {"ours": _eager_ours, "create_task": _eager_stdlib},
    }
    return {"figures": _measure(variants[seam], n)}


# --- the report (parent side) ---------------------------------------------------------


def run(opts: Options, command: str) -> str:
    env = environment(opts)
    figs: dict[tuple[str, str, str], Figure] = {}
    nodes: set[str] = set()
    for rep in range(1, opts.reps + 1):
        for seam, (_, alternatives, n, quick_n) in SEAMS.items():
            names = ["ours", *(a for a, _ in alternatives)]
            result = run_child("seams", {"seam": seam, "n": quick_n if opts.quick else n}, opts.timeout)
            cells = [figs.setdefault((seam, name, kind), Figure()) for name in names for kind in ("wall", "cpu")]
            if failed(result, cells, f"rep {rep} {seam}"):
                continue
            nodes.update([result["node"]] if "node" in result else [])
            for name in names:
                for kind in ("wall", "cpu"):
                    figs.setdefault((seam, name, kind), Figure()).values.append(result["figures"][name][kind])
            log(f"  rep {rep} {seam}: " + ", ".join(
                f"{name} {result['figures'][name]['wall']:.1f} µs" for name in names))
    out = [f"## seams: {TITLE}", "", environment_markdown(env, command),
           f"- **Repetitions:** {opts.reps}, each a fresh process per seam; inside it {ROUNDS} alternating "
           "rounds per variant, best round kept; median and min–max over repetitions",
           f"- **RPC node:** {', '.join(sorted(nodes)) or '—'} on 127.0.0.1 (another process)", "",
           "| seam | ours | µs/op (wall) | alternative | µs/op (wall) | alternative / ours (wall) "
           "| alternative / ours (client CPU) |",
           "|---|---|---|---|---|---|---|"]
    for seam, (ours, alternatives, _, _) in SEAMS.items():
        for alt, what in alternatives:
            mine, theirs = figs.get((seam, "ours", "wall"), Figure()), figs.get((seam, alt, "wall"), Figure())
            cpu_mine, cpu_theirs = figs.get((seam, "ours", "cpu"), Figure()), figs.get((seam, alt, "cpu"), Figure())
            out.append(f"| {seam} | {ours} | {mine.cell('{:.1f}')} | {what} | {theirs.cell('{:.1f}')} | "
                       f"{ratio(theirs, mine)} | {ratio(cpu_theirs, cpu_mine)} |")
    out += ["", "A ratio above 1× is the gain the hand-written piece is kept for; at or below 1× it "
            "should go.  The machine is shared: compare ratios, not absolute figures.", ""]
    return "\n".join(out)
