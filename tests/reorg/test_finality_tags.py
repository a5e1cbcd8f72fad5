"""Finalized() and Safe() follow the chain's own ``finalized`` / ``safe`` tags.

The in-process EVM's tags trail ``latest`` by ``set_finality_depth(n)`` blocks; anvil's
move on their own (safe = latest - 32, finalized = latest - 64).  The test reads the
lag from the node, then checks the exact boundary: with the tag one block below the
mint's block the submission is included but not final (although it has many
confirmations), and the head that lifts the tag to the mint's block makes it final.
"""

from __future__ import annotations

from typing import Literal

import pytest

import chainflow as cf

from ._rig import Rig, register_mint_flow

POLICIES = {"finalized": cf.Finalized(), "safe": cf.Safe()}


@pytest.mark.parametrize("tag", ["finalized", "safe"])
async def test_tag_policy_completes_exactly_when_the_tag_covers_the_block(rig: Rig, node_kind: str,
                                                                          tag: Literal["finalized", "safe"]) -> None:
    if node_kind == "inprocess":
        rig.net.set_finality_depth(6)
    await rig.mine(70)  # lift anvil's tags above genesis

    def tagged() -> int:
        return int(rig.w3.eth.get_block(tag)["number"])

    lag = rig.head() - tagged()
    assert lag == {"inprocess": 6, "anvil": {"safe": 32, "finalized": 64}[tag]}[node_kind]

    register_mint_flow(rig, POLICIES[tag])
    async with rig.worker():
        await rig.step()
        h = await rig.app.astart("mint_flow", {"id": "order-1"})
        await rig.wait_status(h.id, ("waiting",))
        sub = rig.sub("order-1")
        (attempt,) = rig.attempts(sub.id)
        block = rig.mined_block(attempt.tx_hash)

        # one head short: the tag sits just below the mint's block
        await rig.mine(block + lag - 1 - rig.head())
        await rig.step()
        assert tagged() == block - 1
        sub = rig.sub("order-1")
        assert sub.state == "included" and sub.block_number == block
        assert rig.head() - block + 1 == lag, "Confirmations(lag) would already hold; the tag does not"
        assert (await rig.status(h.id)).status == "waiting"

        await rig.mine(1)
        stats = await rig.step()
        assert tagged() == block
        assert stats.settled == 1
        assert rig.sub("order-1").state == "final"
        st = await rig.wait_status(h.id)

    assert st.status == "completed", st.error
    assert st.output["block"] == block and st.output["tx"] == attempt.tx_hash
    assert rig.effects() == ["reserve", "credit", "notify"]


@pytest.mark.parametrize("node_kind", ["inprocess"])  # set_finality_depth is an in-process EVM control
async def test_inprocess_finality_lag_change_holds_then_releases(rig: Rig) -> None:
    """``set_finality_depth`` mid-run: a lagging finalized tag holds the step back for
    as long as it lags, however many blocks pass; lowering the lag releases it."""
    rig.net.set_finality_depth(1000)
    register_mint_flow(rig, cf.Finalized())
    async with rig.worker():
        await rig.step()
        h = await rig.app.astart("mint_flow", {"id": "order-1"})
        await rig.wait_status(h.id, ("waiting",))
        for _ in range(10):
            await rig.mine(1)
            await rig.step()
        assert rig.sub("order-1").state == "included"
        assert (await rig.status(h.id)).status == "waiting"
        rig.net.set_finality_depth(0)
        stats = await rig.step()  # no new block: the tag moved, the included set is re-checked
        assert stats.settled == 1 and stats.new_blocks == 0
        st = await rig.wait_status(h.id)
    assert st.status == "completed", st.error
