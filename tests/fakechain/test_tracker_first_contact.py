"""A tracker's first look at a chain: payments already broadcast are not overdue.

A fresh tracker stores its window from ``start_depth`` below the head.  Payments a
worker broadcast before then start their re-broadcast clock at the head the tracker
first saw, not at the bottom of its window: with ``start_depth`` (16) above
``bump_blocks`` (6), starting it at the bottom made every pending payment look 16
blocks old, and the first iteration fee-bumped them all (found by the Bitcoin
benchmark on a real node: every pending payout replaced when the tracker started).
"""

from __future__ import annotations

import asyncio
import time

from chainflow.testing import CallLog, FakeUtxoChain

from ..engine._util import running_worker
from .test_utxo_protocol import Rig


async def test_a_fresh_tracker_does_not_bump_what_was_broadcast_before_it_started(db_url: str,
                                                                                    ledger: CallLog) -> None:
    # the miner takes nothing this test's fees pay for: the payment stays pending
    rig = Rig(db_url, ledger, FakeUtxoChain(min_mining_fee=10**9), start_depth=16, bump_blocks=6,
              rebroadcast_blocks=3)
    try:
        rig.chain.fund("wallet", 100_000)
        for _ in range(20):
            rig.chain.mine()
        async with running_worker(rig.app, track=False):
            h = await rig.app.astart("pay_flow", {"id": "order-1", "sats": 30_000})
            end = time.monotonic() + 20
            while rig.state("order-1") != "broadcast":
                assert time.monotonic() < end, "the payment was never broadcast"
                await asyncio.sleep(0.02)
            stats = await rig.step()
            sub = rig.sub("order-1")
            assert stats.bumps == stats.rebroadcasts == 0, stats
            assert len(rig.attempts(sub.id)) == 1
            first_seen = rig.chain.height
            assert sub.last_broadcast_block == first_seen, "the clock starts at the head first seen"
            # the policy still applies from there: the first bump bump_blocks heads later
            bumped_at = None
            while bumped_at is None and rig.chain.height < first_seen + 10:
                rig.chain.mine()
                if (await rig.step()).bumps:
                    bumped_at = rig.chain.height
            assert bumped_at == first_seen + 6
            assert len(rig.attempts(sub.id)) == 2 and not rig.app.status(h.id).done
    finally:
        rig.close()
