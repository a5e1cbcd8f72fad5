"""A tracker that fell behind the node.

* It catches up in bounded batches, each committed on its own: a failed RPC call late
  in the catch-up costs one batch, not the way back.
* A match it missed (the node lied about the receipt while the block passed) is
  settled from the stuck path even once the block is below the stored window.

CI once saw both on a loaded machine, against a node that mined ~4 blocks a second
behind a lying proxy: every iteration fetched every block since the stored tip, any
timed-out call threw the whole iteration away, and the gap grew faster than one
all-or-nothing iteration could cover; once caught up, a transaction whose receipt had
been a phantom while its block passed was in a block no longer stored, and its
confirmation wait never ended.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import chainflow as cf
from adapters.evm.errors import RpcUnavailable
from chainflow.chain import chainstore

from ..conftest import CallLog
from ._rig import Rig, build_rig
from .test_tracker_scale import tracked_transfer

BATCH = 16


def stored_tip(rig: Rig) -> int:
    with rig.app.engine.begin() as conn:
        tip = chainstore.header_tip(conn, rig.adapter.name)
    assert tip is not None
    return int(tip.number)


def fail_once_at(rig: Rig, height: int) -> list[int]:
    """Make the adapter's read of the header at ``height`` fail once, as a timed-out
    call does; returns the list the failure is recorded in."""
    failed: list[int] = []
    real = rig.adapter.header_at

    async def header_at(number: int) -> Any:
        if number == height and not failed:
            failed.append(number)
            raise RpcUnavailable("eth_getBlockByNumber", "TimeoutError: (injected)")
        return await real(number)

    rig.adapter.header_at = header_at  # type: ignore[method-assign]
    return failed


async def test_a_tracker_far_behind_catches_up_batch_by_batch(net: Any, db_url: str, ledger: CallLog) -> None:
    rig = build_rig(net, db_url, ledger, catch_up_blocks=BATCH, rebroadcast_blocks=1_000)
    try:
        await rig.step()
        start = stored_tip(rig)
        await rig.mine(40)
        tx_hash = tracked_transfer(rig, "far-behind")
        included = rig.mined_block(tx_hash)
        await rig.mine(30)
        head = rig.head()
        failed = fail_once_at(rig, start + 2 * BATCH + 3)  # inside the third batch

        first = await rig.step()
        assert (first.new_blocks, first.behind) == (BATCH, head - start - BATCH)
        assert stored_tip(rig) == start + BATCH
        assert rig.sub("far-behind").state == "broadcast"  # not yet looked at its block
        await rig.step()
        assert stored_tip(rig) == start + 2 * BATCH
        try:
            await rig.step()
        except RpcUnavailable:
            pass
        else:
            raise AssertionError("the injected failure did not reach the step")
        assert failed and stored_tip(rig) == start + 2 * BATCH  # the batches before it stay

        while stored_tip(rig) < head:
            stats = await rig.step()
            assert stats.new_blocks <= BATCH
        assert stats.behind == 0
        sub = rig.sub("far-behind")
        assert (sub.state, sub.tx_hash, sub.block_number) == ("final", tx_hash, included)
        assert sum(s.matched for s in rig.heads) == 1  # its block was matched once
    finally:
        await rig.close()


async def test_the_tracker_loop_takes_the_next_batch_without_waiting_a_poll(net: Any, db_url: str,
                                                                            ledger: CallLog) -> None:
    # a poll interval far longer than the test: only catch-up without waiting ends it
    rig = build_rig(net, db_url, ledger, catch_up_blocks=BATCH, poll_interval=600.0)
    try:
        await rig.step()
        await rig.mine(5 * BATCH)
        head = rig.head()
        stop = asyncio.Event()
        loop = asyncio.create_task(rig.tracker.run(stop))
        try:
            for _ in range(600):
                if stored_tip(rig) >= head:
                    break
                await asyncio.sleep(0.05)
            assert stored_tip(rig) == head, f"stored tip {stored_tip(rig)}, node head {head}"
        finally:
            stop.set()
            await loop
    finally:
        await rig.close()


async def test_a_match_missed_below_the_window_is_settled_from_the_node(net: Any, db_url: str,
                                                                       ledger: CallLog) -> None:
    window = 8
    rig = build_rig(net, db_url, ledger, window=window, rebroadcast_blocks=1)
    real = rig.adapter.receipt
    lying = True

    async def receipt(tx_hash: str) -> Any:  # a phantom block's receipt while ``lying``
        found = await real(tx_hash)
        return dataclasses.replace(found, block_hash="0x" + "ee" * 32) if lying and found is not None else found

    rig.adapter.receipt = receipt  # type: ignore[method-assign]
    try:
        await rig.step()
        tx_hash = tracked_transfer(rig, "missed")
        included = rig.mined_block(tx_hash)
        while True:
            await rig.mine(1)
            await rig.step()
            if stored_lowest(rig) > included + 1:
                break
        assert rig.sub("missed").state == "broadcast"  # a phantom below the window is no proof either
        lying = False
        await rig.drive(lambda: rig.sub("missed").state == "final", what="the missed match to settle")
        sub = rig.sub("missed")
        assert (sub.tx_hash, sub.block_number) == (tx_hash, included)
    finally:
        await rig.close()


def stored_lowest(rig: Rig) -> int:
    with rig.app.engine.begin() as conn:
        return int(chainstore.lowest_header(conn, rig.adapter.name) or 0)


def test_catch_up_blocks_must_be_positive() -> None:
    for bad in (0, -1):
        try:
            cf.TrackerConfig(catch_up_blocks=bad)
        except ValueError as exc:
            assert "TrackerConfig.catch_up_blocks must be >= 1" in str(exc)
        else:
            raise AssertionError(f"catch_up_blocks={bad} was accepted")
