"""Finality deeper than the tracker's header window (``TrackerConfig.window``).

The tracker sees a reorg only down to the oldest header it keeps.  Two rules keep a
finality policy from being counted on blocks it no longer watches:

* a *new* ``Confirmations(n)`` with ``n`` above the window is refused at ``ctx.submit``,
  naming both numbers, before an intent exists or anything is signed; ``n`` equal to
  the window completes;
* the header under a submission still waiting for its policy is kept however deep:
  ``Finalized()`` lags by what the chain decides (here twice the window), and a deep
  reorg of its block while it waits must send it back to pending, not let it complete
  on the orphaned block later.  Once it is final, pruning returns to the window.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.chain import chainstore
from chainflow.storage.schema import submissions
from devnet import reorg

from ..conftest import CallLog
from ._rig import CHAIN, Rig, build_rig, register_mint_flow

WINDOW = 4


@pytest.fixture
async def rig(net: Any, db_url: str, ledger: CallLog) -> AsyncIterator[Rig]:
    r = build_rig(net, db_url, ledger, window=WINDOW)
    try:
        yield r
    finally:
        await r.close()


async def test_confirmations_beyond_the_window_are_refused_naming_both(rig: Rig) -> None:
    register_mint_flow(rig, cf.Confirmations(WINDOW + 1), name="too_deep")
    register_mint_flow(rig, cf.Confirmations(WINDOW), name="at_the_edge")
    nonce_before = rig.w3.eth.get_transaction_count(rig.minter.address)
    async with rig.worker():
        await rig.step()
        refused = await rig.app.astart("too_deep", {"id": "order-deep"})
        st = await rig.wait_status(refused.id)
        assert st.status == "failed"
        assert st.error is not None
        message = st.error["message"]
        for needle in ("submit 'mint'", f"Confirmations({WINDOW + 1})", f"window of {WINDOW}",
                       f"TrackerConfig.window={WINDOW}", "ConfigurationError"):
            assert needle in message, (needle, message)
        with rig.app.engine.begin() as conn:
            assert conn.execute(sa.select(submissions)).all() == [], "no intent, no nonce"
        assert rig.w3.eth.get_transaction_count(rig.minter.address) == nonce_before, "nothing was sent"
        assert rig.effects() == ["reserve", "unreserve"]

        accepted = await rig.app.astart("at_the_edge", {"id": "order-edge"})
        await rig.drive(lambda: rig.app.status(accepted.id).done, what="the run at the window's edge")
    st = await rig.status(accepted.id)
    assert st.status == "completed", st.error
    assert rig.sub("order-edge").state == "final"


async def test_a_recorded_intent_is_not_refused_when_the_window_shrank(rig: Rig) -> None:
    """An intent recorded under a deeper window (another process's config, or before a
    redeploy) may already hold a nonce: it goes on, and the tracker keeps its headers."""
    deep = cf.Confirmations(WINDOW + 2)
    register_mint_flow(rig, deep)
    h = await rig.app.astart("mint_flow", {"id": "order-1"})
    with rig.app.engine.begin() as conn:  # as the submitting process left it before any worker ran
        chainstore.intent(conn, chain=CHAIN, sender=rig.adapter.sender(), key="order-1", run_id=h.id,
                       step="\x1fmint", request="{}", finality=json.dumps(deep.to_dict()), now=0.0)
    async with rig.worker():
        await rig.step()
        await rig.drive(lambda: rig.app.status(h.id).done, what="the completion")
    st = await rig.status(h.id)
    assert st.status == "completed", st.error
    sub = rig.sub("order-1")
    assert sub.state == "final" and rig.head() - int(sub.block_number) + 1 >= WINDOW + 2


@pytest.mark.parametrize("node_kind", ["inprocess"])  # set_finality_depth is an in-process EVM control
async def test_a_tag_lagging_past_the_window_still_sees_a_deep_reorg_of_its_block(rig: Rig) -> None:
    lag = 3 * WINDOW
    rig.net.set_finality_depth(lag)
    register_mint_flow(rig, cf.Finalized())
    async with rig.worker():
        await rig.step()
        h = await rig.app.astart("mint_flow", {"id": "order-1"})
        await rig.wait_status(h.id, ("waiting",))
        sub = rig.sub("order-1")
        (attempt,) = rig.attempts(sub.id)
        block = rig.mined_block(attempt.tx_hash)
        await rig.step()
        await rig.mine(2 * WINDOW)
        await rig.step()
        sub = rig.sub("order-1")
        assert sub.state == "included" and int(sub.block_number) == block
        assert rig.head() - block > WINDOW, "the block is below the window now"
        old_hash = sub.block_hash

        result = reorg(rig.net, rig.head() - block + 2)  # the mint vanishes from the chain
        assert old_hash in result.old_hashes and rig.chain_tx(attempt.tx_hash) is None
        stats = await rig.step()
        assert stats.reorg_depth > 0
        assert rig.sub("order-1").state == "broadcast", "un-included: its block is gone"
        (event,) = rig.app.reorgs()
        assert event.affected_txs == [attempt.tx_hash]

        rig.net.set_finality_depth(0)
        await rig.drive(lambda: rig.app.status(h.id).done, what="the completion on the new chain")

    st = await rig.status(h.id)
    assert st.status == "completed", st.error
    final = rig.sub("order-1")
    assert final.state == "final" and final.block_hash != old_hash and final.block_hash not in result.old_hashes
    assert st.output["block_hash"] == final.block_hash and st.output["tx"] == attempt.tx_hash
    assert len(rig.attempts(final.id)) == 1, "the same signed bytes, re-broadcast"
    assert rig.balance() == 5, "minted once, on the canonical chain"

    await rig.step()  # nothing waits any more: the window alone decides what is kept
    with rig.app.engine.begin() as conn:
        assert chainstore.lowest_header(conn, CHAIN) == rig.head() - WINDOW


async def test_a_reorg_below_every_stored_header_restarts_the_window(rig: Rig) -> None:
    """Nothing waits, so only ``WINDOW`` headers are kept; a reorg twice as deep orphans
    them all.  The tracker records it and starts the window again from the node's header
    at the fork, instead of failing every iteration on an empty window."""
    await rig.mine(3 * WINDOW)
    await rig.step()
    result = reorg(rig.net, 2 * WINDOW)
    stats = await rig.step()
    assert stats.reorg_depth == WINDOW + 1, "every stored header orphaned"
    (event,) = rig.app.reorgs()
    assert event.old_hashes == result.old_hashes[-(WINDOW + 1):]
    head = rig.w3.eth.get_block("latest")
    with rig.app.engine.begin() as conn:
        tip = chainstore.header_tip(conn, CHAIN)
        assert tip is not None and (tip.number, tip.hash) == (head["number"], head["hash"].to_0x_hex())
    await rig.mine(1)
    stats = await rig.step()
    assert (stats.new_blocks, stats.reorg_depth) == (1, 0)
