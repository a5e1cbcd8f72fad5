"""Nodes that answer from the wrong place must not make the tracker decide on blocks
it never checked.

* A node answering from behind (a load balancer whose backends lag a block or two):
  the block holding our mint is replaced, the chain grows on the new branch, and one
  header read comes back empty, as from a backend that has not seen that height yet.
  The tracker must not count confirmations up to the node's head across that gap: it
  decides at the newest header it chained onto its window.
* A receipt read answered empty (a backend that has not indexed it yet) while the
  nonce already reads as used: not yet proof of a foreign transaction.
* A URL that serves another chain than the adapter was configured for, or than it
  served before (a node replaced behind the URL): every stored header would look
  orphaned, and a final payment would be rolled back.
* A node answering "latest" with a block below the stored tip, one the window holds:
  it is behind, not reorganised.
* Receipts lagging the blocks for longer than the stuck path's patience: a payment
  the tracker saw in a canonical block is not a foreign use of its nonce.
* Bytes the node refuses for good: flagged stuck, not re-sent in silence forever.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from adapters.evm import ChainIdMismatch, EvmChain, LocalSigner
from chainflow.chain.tracker import Tracker
from chainflow.storage import schema
from devnet import Anvil, reorg

from ._rig import CHAIN, Rig, register_mint_flow


async def _start_order(rig: Rig, *, until: str = "waiting") -> str:
    """Inside the rig's worker: the first head, then the mint flow for "order-1",
    awaited until it is waiting on its mint or (``until="done"``) complete."""
    await rig.step()
    run_id = (await rig.app.astart("mint_flow", {"id": "order-1"})).id
    if until == "done":
        await rig.drive(lambda: rig.app.status(run_id).done, what="completion")
    else:
        await rig.wait_status(run_id, (until,))
    return run_id


def _reorgs(rig: Rig) -> int:
    with rig.app.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(schema.reorgs)).scalar_one())


async def test_no_finality_is_decided_at_a_head_the_tracker_could_not_chain(rig: Rig) -> None:
    register_mint_flow(rig, cf.Confirmations(4))
    async with rig.worker():
        run_id = await _start_order(rig)
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
        assert rig.app.status(run_id).status == "waiting"


@pytest.mark.parametrize("lag", [1, 6])
async def test_a_receipt_not_indexed_yet_does_not_fail_a_mined_payment_as_foreign(rig: Rig, lag: int) -> None:
    """Receipts missing for ``lag`` heads after the payment is mined: one, then six, far
    past the stuck path's patience (``rebroadcast_blocks``), where what holds the
    failure off is the block the tracker saw the payment in."""
    register_mint_flow(rig, cf.Confirmations(1))
    rig.net.set_automine(False)
    async with rig.worker():
        run_id = await _start_order(rig)
        sub = rig.sub("order-1")
        tx_hash = rig.attempts(sub.id)[0].tx_hash
        await rig.step()
        real = rig.adapter.receipt

        async def not_indexed_yet(tx_hash: str) -> None:
            return None

        rig.adapter.receipt = not_indexed_yet  # type: ignore[method-assign]
        for _ in range(lag):  # mined, while the receipt reads answer nothing: the nonce reads as used
            await rig.mine(1)
            await rig.step()
        rig.adapter.receipt = real  # type: ignore[method-assign]
        await rig.drive(lambda: rig.app.status(run_id).done, what="completion")
    sub = rig.sub("order-1")
    assert sub.state == "final" and sub.tx_hash == tx_hash, sub.error
    assert rig.app.status(run_id).status == "completed"
    assert rig.effects() == ["reserve", "credit", "notify"]


async def test_a_node_of_another_chain_is_refused_before_any_header_is_read(rig: Rig) -> None:
    register_mint_flow(rig, cf.Confirmations(1))
    async with rig.worker():
        run_id = await _start_order(rig, until="done")
    assert rig.sub("order-1").state == "final"
    # the same chain name, configured for mainnet, its URL serving the devnet
    wrong = EvmChain(CHAIN, rig.net.rpc_url, LocalSigner.from_key(rig.minter.private_key), chain_id=1)
    tracker = Tracker(rig.app.database, rig.app.clock, wrong, "test-tracker", rig.config)  # the leader's name
    try:
        with pytest.raises(ChainIdMismatch, match=f"chain {CHAIN!r} is configured with chain id 1"):
            await tracker.step()
    finally:
        await wrong.aclose()
    assert rig.sub("order-1").state == "final" and rig.app.status(run_id).status == "completed"
    assert _reorgs(rig) == 0


async def test_a_node_reporting_a_lower_head_it_shares_is_behind_not_reorganised(rig: Rig) -> None:
    register_mint_flow(rig, cf.Confirmations(1))
    async with rig.worker():
        run_id = await _start_order(rig, until="done")
        sub = rig.sub("order-1")
        assert sub.state == "final"
        mint_block = int(sub.block_number)
        await rig.step()
        real_call = rig.adapter.rpc.call

        async def lagging(method: str, *params: Any) -> Any:  # a backend a few blocks behind
            if method == "eth_getBlockByNumber" and params and params[0] == "latest":
                return await real_call(method, hex(mint_block - 1), *params[1:])
            return await real_call(method, *params)

        rig.adapter.rpc.call = lagging  # type: ignore[method-assign]
        await rig.step()
        rig.adapter.rpc.call = real_call  # type: ignore[method-assign]
        await rig.mine(1)
        await rig.step()
    assert rig.chain_tx(sub.tx_hash).blockNumber == mint_block
    assert rig.effects() == ["reserve", "credit", "notify"]
    assert rig.app.status(run_id).status == "completed"
    assert _reorgs(rig) == 0


@pytest.mark.parametrize("node_kind", ["anvil"], indirect=True)
async def test_a_node_of_another_chain_behind_the_url_mid_life_is_refused(rig: Rig) -> None:
    register_mint_flow(rig, cf.Confirmations(1))
    async with rig.worker():
        run_id = await _start_order(rig, until="done")
        await rig.mine(3)
        await rig.step()
        port = rig.net.port
        rig.net.stop()  # the same port now serves another chain, a few blocks in
        with Anvil(chain_id=999).start(port=port) as other:
            other.mine(20)
            for _ in range(3):
                with pytest.raises(ChainIdMismatch, match="999"):
                    await rig.step()
    assert rig.sub("order-1").state == "final" and rig.app.status(run_id).status == "completed"
    assert _reorgs(rig) == 0


@pytest.mark.parametrize("node_kind", ["anvil"], indirect=True)
async def test_bytes_the_node_refuses_for_good_are_flagged_stuck(rig: Rig) -> None:
    """The gas limit signed is above the block gas limit ("intrinsic gas too high"):
    no re-broadcast can change that, and the nonce holds the sender's later payments."""
    register_mint_flow(rig, cf.Confirmations(1))
    estimate = rig.mint(5).estimate_gas({"from": rig.minter.address})
    rig.net.rpc("evm_setBlockGasLimit", hex(int(estimate * 1.1)))  # below the adapter's headroom
    stuck: list[cf.Event] = []
    rig.tracker.events.on("submission_stuck")(stuck.append)
    async with rig.worker():
        await _start_order(rig)
        for _ in range(6):
            await rig.mine(1)
            await rig.step()
    sub = rig.sub("order-1")
    assert sub.stuck_since is not None, sub.state
    assert len(stuck) == 1 and stuck[0].error is not None and "intrinsic gas too high" in stuck[0].error
