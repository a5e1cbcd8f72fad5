"""The wallet's coin view against a real regtest node: one ``scantxoutset`` at start,
then block by block, walking reorgs back -- coins of an orphaned block stop being
spendable until re-included, coins an orphaned block spent come back -- and a scan
again only when a reorg goes below what the view remembers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters.bitcoin import BitcoinChain, DescriptorWallet
from devnet.regtest import sats_to_coins

from ._btc import master_key


class Counting:
    """Counts the node calls the adapter makes, by method."""

    def __init__(self, chain: BitcoinChain) -> None:
        self.calls: dict[str, int] = {}
        call = chain.rpc.call

        async def counted(method: str, *params: Any, **kw: Any) -> Any:
            self.calls[method] = self.calls.get(method, 0) + 1
            return await call(method, *params, **kw)

        chain.rpc.call = counted  # type: ignore[method-assign]


@pytest.fixture
async def btc(regtest_node: Any) -> AsyncIterator[BitcoinChain]:
    chain = BitcoinChain("btc", rpc=regtest_node.rpc_url, network=regtest_node.network,
                         wallet=DescriptorWallet(master_key(os.urandom(16), regtest_node.network)), lookahead=3)
    chain._coins._depth = 4  # a small memory, so the test can reorg below it
    yield chain
    await chain.aclose()


async def values(btc: BitcoinChain) -> list[int]:
    return sorted(c.value for c in await btc.coins(btc.sender()))


async def test_one_scan_then_block_by_block(btc: BitcoinChain, regtest_node: Any) -> None:
    node = regtest_node
    node.fund(btc.sender(), 200_000)
    counting = Counting(btc)
    assert await values(btc) == [200_000]
    node.fund(btc.keyring.addresses[2], 300_000)
    node.mine(3)
    assert await values(btc) == [200_000, 300_000]
    assert await values(btc) == [200_000, 300_000]
    assert counting.calls.get("scantxoutset") == 1, counting.calls
    assert counting.calls.get("getblock") == 4, "each new block read once"


async def test_a_reorg_takes_back_coins_and_spends_of_orphaned_blocks(btc: BitcoinChain, regtest_node: Any) -> None:
    node = regtest_node
    kept = node.fund(btc.sender(), 500_000)
    assert await values(btc) == [500_000]
    orphan = node.fund(btc.sender(), 250_000)  # funded in the block the reorg orphans
    assert await values(btc) == [250_000, 500_000]
    counting = Counting(btc)
    node.reorg(1)  # the funding tx goes back to the mempool, not into the fork
    assert await values(btc) == [500_000], "a coin of an orphaned block is not spendable"
    node.mine(1)  # re-included
    assert await values(btc) == [250_000, 500_000]
    # our own spend of the kept coin, mined, then orphaned: the coin comes back
    request = await btc.estimate(btc.prepare(btc.pay(node.rpc("getnewaddress"), sats=100_000)))
    signed = await btc.sign(request, [kept], None)
    await btc.broadcast(signed.raw)
    node.mine(1)
    after_spend = await values(btc)
    assert 500_000 not in after_spend and len(after_spend) == 2, "the spent coin left, its change arrived"
    node.reorg(1)
    assert await values(btc) == [250_000, 500_000]
    assert orphan.split(":")[0] not in node.mempool(), "re-included before our spend's reorg"
    assert "scantxoutset" not in counting.calls, "reorgs within memory need no scan"


async def test_a_shorter_chain_and_a_reorg_below_memory(btc: BitcoinChain, regtest_node: Any) -> None:
    node = regtest_node
    node.fund(btc.sender(), 400_000)
    assert await values(btc) == [400_000]
    top = node.fund(btc.sender(), 150_000)
    assert await values(btc) == [150_000, 400_000]
    tip = node.rpc("getbestblockhash")
    node.rpc("invalidateblock", tip)  # the chain gets shorter
    assert await values(btc) == [400_000]
    node.rpc("reconsiderblock", tip)
    assert await values(btc) == [150_000, 400_000]
    node.mine(6)
    assert await values(btc) == [150_000, 400_000]
    counting = Counting(btc)
    node.reorg(7)  # deeper than the 4 blocks the view remembers: it scans again
    assert await values(btc) == [400_000] and counting.calls.get("scantxoutset") == 1
    assert top.split(":")[0] in node.mempool(), "the orphaned funding waits in the mempool"


async def test_a_coin_created_and_spent_in_one_orphaned_block_does_not_come_back(btc: BitcoinChain,
                                                                                 regtest_node: Any) -> None:
    """Spends chained in the mempool (here by hand: the engine spends only mined coins,
    another wallet with the same keys need not) can be mined into one block.  Taking
    that block back restores what it spent from before it, never the coin it both
    created and spent."""
    node = regtest_node
    kept = node.fund(btc.sender(), 500_000)
    assert await values(btc) == [500_000]
    own = btc.keyring.addresses[1]
    first = await btc.sign(await btc.estimate(btc.prepare(btc.pay(own, sats=200_000))), [kept], None)
    assert (await btc.broadcast(first.raw)).outcome.name == "ACCEPTED"
    decoded = node.rpc("decoderawtransaction", first.raw.hex())
    middle = next(f"{decoded['txid']}:{out['n']}" for out in decoded["vout"] if out["value"] == sats_to_coins(200_000))
    second = await btc.sign(await btc.estimate(btc.prepare(btc.pay(node.rpc("getnewaddress"), sats=100_000))),
                            [middle], None)
    assert (await btc.broadcast(second.raw)).outcome.name == "ACCEPTED"
    node.mine(1)  # both in one block
    mined = await values(btc)
    assert len(mined) == 2 and 200_000 not in mined and 500_000 not in mined, "two changes left"
    node.reorg(1)  # both back to the mempool, the fork empty
    assert await values(btc) == [500_000], "the coin the orphaned block created and spent is not spendable"
