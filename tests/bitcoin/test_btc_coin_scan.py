"""Payouts allocating at once share one ``scantxoutset`` at start, and after a new
block one read of that block.

Found by the Bitcoin benchmark: 100 unbatched payouts made 275 scans, 125 of them
refused by the node ("scan already in progress") and retried after a sleep, while
each scan stalled every other call to the node; payouts ran at ~3-5 per second.

And found by CI on a loaded machine: those twenty concurrent reads overflowed the
node's RPC work queue, which refuses the excess with HTTP 500."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from adapters.bitcoin import BitcoinChain, DescriptorWallet, master_key
from adapters.bitcoin.rpc import BitcoinRpc
from chainflow.chain.adapter import Coin
from devnet import RegtestNode

from ..conftest import require_regtest


async def test_concurrent_coin_reads_of_one_block_make_one_scan(regtest_node: Any) -> None:
    node = regtest_node
    btc = BitcoinChain("btc", rpc=node.rpc_url, network=node.network,
                       wallet=DescriptorWallet(master_key(os.urandom(16), node.network)), lookahead=3)
    funded = node.fund(btc.sender(), 250_000)
    methods: list[str] = []
    call = btc.rpc.call

    async def counting(method: str, *params: Any, **options: Any) -> Any:
        methods.append(method)
        return await call(method, *params, **options)

    btc.rpc.call = counting  # type: ignore[method-assign]
    try:
        answers = await asyncio.gather(*(btc.coins(btc.sender()) for _ in range(20)))
        assert answers == [[Coin(funded, 250_000)]] * 20
        assert methods.count("scantxoutset") == 1
        second = node.fund(btc.sender(), 50_000)  # a new block: read once, seen by all, no scan
        answers = await asyncio.gather(*(btc.coins(btc.sender()) for _ in range(20)))
        assert all(sorted(a, key=lambda c: c.value) == [Coin(second, 50_000), Coin(funded, 250_000)] for a in answers)
        assert methods.count("scantxoutset") == 1 and methods.count("getblock") == 1
    finally:
        await btc.aclose()


async def test_more_calls_than_the_node_queues_wait_instead_of_being_refused() -> None:
    # one RPC thread and a queue of two: 64 calls at once would find it full
    require_regtest()
    with RegtestNode(extra_args=["-rpcworkqueue=2", "-rpcthreads=1"]) as node:
        rpc = BitcoinRpc(node.rpc_url, timeout=30, connections=2)
        try:
            answers = await asyncio.gather(*(rpc.call("getblockhash", 0) for _ in range(64)),
                                           return_exceptions=True)
        finally:
            await rpc.aclose()
    assert [a for a in answers if isinstance(a, BaseException)] == []
    assert len(set(answers)) == 1
