"""A shallow reorg before finality is the tracker's business only.

Confirmations(5); the mint is included, then its block (and one more) is replaced
before the fifth confirmation, and the devnet does not replay it.  Expected: no
compensation of any kind, the tracker re-broadcasts the *same* signed bytes (same hash,
same nonce, no second signature), the step completes once: one live journal entry per
step, nothing invalidated.

Reorg flavours: ``anvil_reorg`` (replace the newest blocks), snapshot + revert to a fork
point with a competing branch, and ``anvil_rollback`` (the chain gets shorter).
"""

from __future__ import annotations

import pytest
from web3.types import RPCEndpoint

import chainflow as cf
from devnet import mark_fork_point, reorg, reorg_to, rollback

from ._rig import Rig, register_mint_flow


@pytest.mark.parametrize(("how", "depth"), [("anvil_reorg", 2), ("snapshot", 1), ("rollback", 2)])
async def test_shallow_reorg_rebroadcasts_same_bytes_without_compensation(rig: Rig, how: str, depth: int) -> None:
    register_mint_flow(rig, cf.Confirmations(5))
    app, net = rig.app, rig.net
    async with rig.worker():
        await rig.step()  # the tracker follows the chain from here
        point = mark_fork_point(net) if how == "snapshot" else None
        h = await app.astart("mint_flow", {"id": "order-1"})
        await rig.wait_status(h.id, ("waiting",))  # parked on the submission (automine mined it)

        sub = rig.sub("order-1")
        (attempt,) = rig.attempts(sub.id)
        block = rig.mined_block(attempt.tx_hash)
        if depth > 1:
            await rig.mine(depth - 1)
        await rig.step()
        sub = rig.sub("order-1")
        assert (sub.state, sub.block_number, sub.tx_hash) == ("included", block, attempt.tx_hash)
        assert rig.head() - block + 1 < 5, "still short of Confirmations(5)"
        old_block_hash = sub.block_hash

        if how == "anvil_reorg":
            result = reorg(net, depth)
            assert result.old_hashes[0] == old_block_hash
        elif how == "snapshot":
            assert point is not None and point.height == block - 1
            result = reorg_to(net, point)
            assert result.old_hashes[0] == old_block_hash
        else:
            removed = rollback(net, depth)
            assert removed[0] == old_block_hash
        assert rig.chain_tx(attempt.tx_hash) is None, "the devnet must not have replayed the mint"
        if how == "rollback":  # a shorter chain alone reads as a node behind: the new branch's first block
            await rig.mine(1)

        stats = await rig.step()
        assert stats.reorg_depth == depth
        sub = rig.sub("order-1")
        assert sub.state == "broadcast" and sub.block_hash is None
        st = await rig.status(h.id)
        assert st.status == "waiting", "a reorg before finality must not reopen or roll back the run"

        await rig.drive(lambda: rig.app.status(h.id).done, what="the run to complete")

    st = await rig.status(h.id)
    assert st.status == "completed", st.error
    assert st.output["tx"] == attempt.tx_hash and st.output["nonce"] == sub.nonce

    # same signed bytes: one attempt ever, re-sent by the tracker, re-included elsewhere
    assert len(rig.attempts(sub.id)) == 1
    assert sum(s.rebroadcasts for s in rig.heads) >= 1
    again = rig.chain_tx(attempt.tx_hash)
    assert again is not None and again.blockNumber is not None
    assert int(again.nonce) == int(sub.nonce)
    assert again.blockHash.hex().removeprefix("0x") != old_block_hash.removeprefix("0x")
    raw = rig.w3.provider.make_request(RPCEndpoint("eth_getRawTransactionByHash"), [attempt.tx_hash])["result"]
    assert bytes.fromhex(raw.removeprefix("0x")) == bytes(attempt.raw)
    final = rig.sub("order-1")
    assert (final.state, final.tx_hash, final.nonce) == ("final", attempt.tx_hash, sub.nonce)
    assert final.block_hash != old_block_hash
    assert rig.balance() == 5, "minted exactly once"

    # no compensation of any kind; every step once; nothing invalidated
    assert rig.effects() == ["reserve", "credit", "notify"]
    assert st.compensations == {}
    assert rig.invalidated(h.id) == []
    assert rig.live(h.id) == ["reserve", "mint", "credit", "notify"]
    assert all(e.status == "ok" for e in app.journal(h.id))

    (event,) = app.reorgs()
    assert event.depth == depth and event.affected_txs == [attempt.tx_hash]
    assert old_block_hash in event.old_hashes
