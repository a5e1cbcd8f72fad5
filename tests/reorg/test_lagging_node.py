"""Nodes that answer from the wrong place must not make the tracker decide on blocks
it never checked.

* A node answering from behind (a load balancer whose backends lag a block or two):
  the block holding our mint is replaced, the chain grows on the new branch, and one
  header read comes back empty, as from a backend that has not seen that height yet.
  The tracker must not count confirmations up to the node's head across that gap: it
  decides at the newest header it chained onto its window.
* A receipt read answered empty (a backend that has not indexed it yet) while the
  nonce already reads as used: not yet proof of a foreign transaction.
* A URL that serves another chain than the adapter was configured for: every stored
  header would look orphaned, and a final payment would be rolled back.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from adapters.evm import ChainIdMismatch, EvmChain, LocalSigner
from chainflow.chain.tracker import Tracker
from chainflow.storage import schema
from devnet import reorg

from ._rig import CHAIN, Rig, register_mint_flow


async def test_no_finality_is_decided_at_a_head_the_tracker_could_not_chain(rig: Rig) -> None:
    register_mint_flow(rig, cf.Confirmations(4))
    async with rig.worker():
        await rig.step()
        h = await rig.app.astart("mint_flow", {"id": "order-1"})
        await rig.wait_status(h.id, ("waiting",))
        sub = rig.sub("order-1")
        block = rig.mined_block(rig.attempts(sub.id)[0].tx_hash)
        await rig.step()
        assert rig.sub("order-1").state == "included" and rig.head() == block

        reorg(rig.net, 1)  # our block replaced by one without the mint, which is gone
        await rig.mine(5)
        real, lagging = rig.adapter.header_at, {block + 1}

        async def header_at(number: int) -> Any:
            if number in lagging:  # once: the next read reaches an up-to-date backend
                lagging.discard(number)
                return None
            return await real(number)

        rig.adapter.header_at = header_at  # type: ignore[method-assign]
        stats = await rig.step()
        assert rig.sub("order-1").state != "final", \
            f"final on confirmations counted across an unchecked gap ({stats.new_blocks} new headers taken)"
        await rig.step()  # the next read sees the replaced block: the reorg takes the mint back
        assert rig.sub("order-1").state not in ("final", "included")
        assert rig.app.status(h.id).status == "waiting"


async def test_a_receipt_not_indexed_yet_does_not_fail_a_mined_payment_as_foreign(rig: Rig) -> None:
    register_mint_flow(rig, cf.Confirmations(1))
    rig.net.set_automine(False)
    async with rig.worker():
        await rig.step()
        h = await rig.app.astart("mint_flow", {"id": "order-1"})
        await rig.wait_status(h.id, ("waiting",))
        sub = rig.sub("order-1")
        tx_hash = rig.attempts(sub.id)[0].tx_hash
        await rig.step()
        await rig.mine(1)  # mined, while the receipt reads below answer nothing
        real = rig.adapter.receipt

        async def not_indexed_yet(tx_hash: str) -> None:
            return None

        rig.adapter.receipt = not_indexed_yet  # type: ignore[method-assign]
        await rig.step()  # the nonce reads as used, and no receipt of ours on this head
        rig.adapter.receipt = real  # type: ignore[method-assign]
        await rig.drive(lambda: rig.app.status(h.id).done, what="completion")
    sub = rig.sub("order-1")
    assert sub.state == "final" and sub.tx_hash == tx_hash, sub.error
    assert rig.app.status(h.id).status == "completed"
    assert rig.effects() == ["reserve", "credit", "notify"]


async def test_a_node_of_another_chain_is_refused_before_any_header_is_read(rig: Rig) -> None:
    register_mint_flow(rig, cf.Confirmations(1))
    async with rig.worker():
        await rig.step()
        h = await rig.app.astart("mint_flow", {"id": "order-1"})
        await rig.drive(lambda: rig.app.status(h.id).done, what="completion")
    assert rig.sub("order-1").state == "final"
    # the same chain name, configured for mainnet, its URL serving the devnet
    wrong = EvmChain(CHAIN, rig.net.rpc_url, LocalSigner.from_key(rig.minter.private_key), chain_id=1)
    tracker = Tracker(rig.app.database, rig.app.clock, wrong, "test-tracker", rig.config)  # the leader's name
    try:
        with pytest.raises(ChainIdMismatch, match=f"chain {CHAIN!r} is configured with chain id 1"):
            await tracker.step()
    finally:
        await wrong.aclose()
    assert rig.sub("order-1").state == "final" and rig.app.status(h.id).status == "completed"
    with rig.app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.reorgs)).scalar() == 0
