"""A sender's nonces start from the chain's pending nonce once, however many of its first
submissions arrive together, and a process that finds the sender's row in the table
takes it as the truth without asking the chain.

Before, each of a burst of first submissions (a fresh worker's backlog) allocated, found
no row, read the chain's nonce and allocated again: three statements, one RPC call and
one group commit round more per submission, for the whole burst.
"""

from __future__ import annotations

from typing import Any

import chainflow as cf
from adapters.evm import EvmReceipt

from ..conftest import CallLog
from ._rig import CHAIN, Rig, build_rig

RUNS = 12


def count_nonce_reads(rig: Rig) -> list[str]:
    """Record each read of the chain's pending nonce the adapter makes."""
    reads: list[str] = []
    real = rig.adapter.pending_nonce

    async def pending_nonce(sender: str) -> int:
        reads.append(sender)
        return await real(sender)

    rig.adapter.pending_nonce = pending_nonce  # type: ignore[method-assign]
    return reads


def register(rig: Rig) -> None:
    @rig.app.workflow("mint_once")
    async def mint_once(ctx: cf.Context, i: int) -> int:
        r = await ctx.submit("mint", chain=CHAIN, tx=rig.mint(100 + i), idempotency_key=f"seed-{i}",
                             finality=cf.Confirmations(1))
        assert isinstance(r, EvmReceipt)
        return int(r.nonce)


async def run_all(rig: Rig, first: int) -> list[int]:
    handles = [await rig.app.astart("mint_once", i) for i in range(first, first + RUNS)]
    async with rig.worker():
        await rig.drive(lambda: all(rig.app.status(h.id).done for h in handles), what="every mint")
    results = [rig.app.status(h.id) for h in handles]
    assert [r.status for r in results] == ["completed"] * RUNS, [r.error for r in results]
    return sorted(int(r.output) for r in results)


async def test_a_burst_of_first_submissions_reads_the_chain_nonce_once(net: Any, db_url: str,
                                                                      ledger: CallLog) -> None:
    rig = build_rig(net, db_url, ledger)
    try:
        register(rig)
        reads = count_nonce_reads(rig)
        start = rig.w3.eth.get_transaction_count(rig.minter.address, "pending")
        await rig.step()
        assert await run_all(rig, 0) == list(range(start, start + RUNS))
        assert reads == [rig.adapter.sender()]
        await rig.reopen()
        register(rig)
        reads = count_nonce_reads(rig)
        assert await run_all(rig, RUNS) == list(range(start + RUNS, start + 2 * RUNS))
        assert reads == [], "a sender's row in the table is the truth: the chain's nonce was read again"
    finally:
        await rig.close()

