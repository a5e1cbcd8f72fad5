"""A run waiting for its transaction's finality resumes as soon as the tracker of its
own process records it final, not at the worker's next poll: the tracker wakes the
worker after a head's commit that woke runs.  The worker here polls every 30 s, so
only the wake-up can finish the run within the test's few seconds.
"""

from __future__ import annotations

import time

import chainflow as cf

from ._rig import CHAIN, Rig

POLL = 30.0  # the worker's poll interval: far longer than the wait the test allows


async def test_a_run_waiting_for_finality_resumes_when_its_tracker_settles_it(rig: Rig) -> None:
    @rig.app.workflow("mint_once")
    async def mint_once(ctx: cf.Context, amount: int) -> str:
        receipt = await ctx.submit("mint", chain=CHAIN, tx=rig.mint(amount),
                                   idempotency_key=f"mint-{amount}", finality=cf.Confirmations(2))
        return str(receipt.tx_hash)

    async with rig.worker(track=True, poll_interval=POLL):
        started = time.monotonic()
        run = await rig.app.astart("mint_once", 7)
        # parked on its receipt: the worker let the run go, and only a claim resumes it
        await rig.wait_status(run.id, ("waiting",), timeout=10)
        await rig.mine(2)  # final (whether the node mined the transaction itself or not)
        st = await rig.wait_status(run.id, timeout=10)
    assert st.status == "completed", st.error
    assert time.monotonic() - started < POLL / 2
    assert rig.chain_tx(st.output)["blockNumber"] is not None
