"""Payouts through the whole engine on a real regtest node (Debian's litecoind 0.21, or
bitcoind), on SQLite and Postgres: fee bumps while mining is paused, the fee budget's
stuck flag, shallow and deep reorgs, a double-spend mined on a fork, batched payouts
rolled back by a reorg, and the amount and address edge cases.

Every run goes app -> worker -> ``ctx.submit`` -> the chain's real tracker (stepped by
the test after each block it mines, see ``_rig``).  What is asserted is read from the
node (blocks, mempool, UTXO set, the signed bytes decoded by the node) and from the
tables.  One node serves the module: each test pays from a wallet of a fresh seed to
payees of another, so tests never see each other's coins.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import chainflow as cf
from adapters.bitcoin.addresses import dust_limit, script_for
from adapters.bitcoin.fees import fee_for, vsize
from adapters.bitcoin.transaction import Prevout, sign
from chainflow import metrics
from chainflow.testing import CallLog
from devnet import RegtestNode

from ..adapters._btc import BIP84_ADDRESSES
from ..conftest import require_regtest
from ._rig import CHAIN, NodeRig, sats

pytestmark = [pytest.mark.regtest, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def node() -> Iterator[RegtestNode]:
    require_regtest()
    with RegtestNode() as started:
        yield started


@pytest.fixture
def ledger(tmp_path: Any) -> CallLog:
    return CallLog(tmp_path / "ledger.log")


@pytest.fixture
async def rig(node: RegtestNode, db_url: str, ledger: CallLog) -> AsyncIterator[NodeRig]:
    made = NodeRig(node, db_url, ledger)
    yield made
    await made.close()


# --- fee bumps ----------------------------------------------------------------------


async def test_a_low_fee_payout_is_bumped_while_mining_is_paused_and_confirms_once(
        node: RegtestNode, db_url: str, ledger: CallLog) -> None:
    """The payout goes out at the fallback fee rate (regtest has no estimate); blocks
    keep coming, but empty: the tracker replaces it every block.  Once blocks take
    transactions again the newest version confirms, alone: every version spent the same
    inputs, each paid more than the one it replaced (BIP125), and each is recorded."""
    rig = NodeRig(node, db_url, ledger, chain={"fallback_feerate": 1000}, bump_blocks=1)
    try:
        coins = sorted([node.fund(rig.btc.sender(), 300_000), node.fund(rig.btc.sender(), 200_000)])
        payee = rig.payees[0]
        async with rig.worker():
            h = await rig.app.astart("payout", {"id": "o-1", "to": payee, "sats": 400_000})
            await rig.drive(lambda: rig.state("o-1") == "broadcast", mine=False, what="the first broadcast")
            sub = rig.sub("o-1")
            for _ in range(10):  # mining paused for it
                if len(rig.attempts(sub.id)) >= 3:
                    break
                await rig.mine_empty()
            candidates = rig.attempts(sub.id)
            assert len(candidates) >= 3, "bumped at every empty block"
            in_mempool = set(node.mempool())
            assert [a.tx_hash in in_mempool for a in candidates] == [False] * (len(candidates) - 1) + [True], \
                "each replacement evicted the version before it"
            st = await rig.until_done(h.id, what="the confirmation")
        assert st.status == "completed", st.error
        sub = rig.sub("o-1")
        assert rig.reserved(sub.id) == coins
        decoded = [rig.decode(a.raw) for a in rig.attempts(sub.id)]
        assert [d["txid"] for d in decoded] == [a.tx_hash for a in candidates]
        assert all(d["inputs"] == coins for d in decoded), "every version spends all the reserved coins"
        assert all(d["vin"][0]["sequence"] < 0xFFFFFFFE for d in decoded), "each signals BIP125 replaceability"
        fees = [d["fee"] for d in decoded]
        assert fees == [rig.fees(a)["fee"] for a in candidates]
        rates = [rig.fees(a)["feerate"] for a in candidates]
        assert rates[0] == 1000
        for i in range(1, len(candidates)):
            # BIP125 rules 3, 4 and 6: a higher fee rate, and an absolute fee higher by at
            # least the incremental relay fee (1000 sat/kvB) for the replacement's size
            assert rates[i] > rates[i - 1] and fees[i] >= fees[i - 1] + fee_for(1000, decoded[i]["vsize"])
        mined = [a.tx_hash for a in candidates if rig.onchain(a.tx_hash)]
        assert mined == [candidates[-1].tx_hash] == [sub.tx_hash] == [st.output["tx"]], "only one is on chain"
        assert not set(node.mempool()) & {a.tx_hash for a in candidates}
        assert st.output["fee"] == fees[-1] and sub.stuck_since is None
        assert rig.paid(payee) == [(f"{sub.tx_hash}:0", 400_000)]
        assert rig.held(sub.id) == [], "the final payout's coins are recorded as spent"
        assert rig.effects() == ["reserve", "credit", "notify"]
    finally:
        await rig.close()


async def test_bumps_stop_at_the_fee_budget_and_the_payout_is_flagged_stuck_not_failed(
        node: RegtestNode, db_url: str, ledger: CallLog) -> None:
    """max_feerate 2500 leaves room for one bump (1000 -> 2000 sat/kvB; the next needs
    3000): then the submission is flagged stuck (``stuck_since``, the metric), keeps its
    last version on the wire and its run waiting; when blocks take it, it confirms."""
    rig = NodeRig(node, db_url, ledger, chain={"fallback_feerate": 1000, "max_feerate": 2500}, bump_blocks=1)
    before = metrics.REGISTRY.get_sample_value("chainflow_submissions_stuck_total", {"chain": CHAIN}) or 0.0
    try:
        (coin,) = [node.fund(rig.btc.sender(), 300_000)]
        payee = rig.payees[0]
        async with rig.worker():
            h = await rig.app.astart("payout", {"id": "o-1", "to": payee, "sats": 100_000})
            await rig.drive(lambda: rig.state("o-1") == "broadcast", mine=False, what="the first broadcast")
            sub = rig.sub("o-1")
            for _ in range(6):
                await rig.mine_empty()
            sub = rig.sub("o-1")
            candidates = rig.attempts(sub.id)
            assert [rig.fees(a)["feerate"] for a in candidates] == [1000, 2000], "no bump past the budget"
            assert sub.stuck_since is not None and sub.state == "broadcast" and sub.error is None
            after = metrics.REGISTRY.get_sample_value("chainflow_submissions_stuck_total", {"chain": CHAIN})
            assert after == before + 1
            assert candidates[-1].tx_hash in node.mempool(), "the last version is still on the wire"
            assert not rig.app.status(h.id).done and rig.held(sub.id) == [coin]
            st = await rig.until_done(h.id, what="the confirmation")
        assert st.status == "completed", st.error
        sub = rig.sub("o-1")
        assert sub.tx_hash == candidates[-1].tx_hash == st.output["tx"] and sub.stuck_since is None
        assert [a.tx_hash for a in candidates if rig.onchain(a.tx_hash)] == [sub.tx_hash]
        assert rig.paid(payee) == [(f"{sub.tx_hash}:0", 100_000)]
    finally:
        await rig.close()


# --- reorgs -----------------------------------------------------------------------


async def test_a_shallow_reorg_before_finality_re_includes_the_payout_and_compensates_nothing(
        rig: NodeRig, node: RegtestNode) -> None:
    """Confirmations(2); the payout's block (one confirmation) is replaced by two empty
    blocks: the payout returns to the mempool and to pending, is mined again on the new
    chain, and the run completes once, with the same transaction."""
    node.fund(rig.btc.sender(), 500_000)
    payee = rig.payees[0]
    async with rig.worker():
        h = await rig.app.astart("payout", {"id": "o-1", "to": payee, "sats": 150_000})
        await rig.drive(lambda: rig.state("o-1") == "broadcast", mine=False, what="the broadcast")
        (attempt,) = rig.attempts()
        await rig.mine()
        sub = rig.sub("o-1")
        assert sub.state == "included" and rig.onchain(attempt.tx_hash)
        reorg = node.reorg(1)
        assert attempt.tx_hash in reorg.orphaned_txs and attempt.tx_hash in node.mempool()
        stats = await rig.step()
        assert stats.reorg_depth == 1
        assert rig.state("o-1") == "broadcast" and not rig.app.status(h.id).done, "back to pending"
        st = await rig.until_done(h.id, what="the completion")
    assert st.status == "completed", st.error
    final = rig.sub("o-1")
    assert (final.id, final.state, final.tx_hash) == (sub.id, "final", attempt.tx_hash)
    assert final.block_hash not in reorg.old_hashes and rig.onchain(attempt.tx_hash)["blockhash"] == final.block_hash
    assert rig.attempts() == [attempt], "nothing re-signed"
    (event,) = rig.app.reorgs()
    assert event.depth == 1 and event.affected_txs == [attempt.tx_hash]
    assert rig.effects() == ["reserve", "credit", "notify"], "nothing compensated"
    assert rig.paid(payee) == [(f"{attempt.tx_hash}:0", 150_000)]


async def test_a_deep_reorg_after_finality_rolls_back_and_the_same_payout_reconfirms_once(
        rig: NodeRig, node: RegtestNode) -> None:
    """Confirmations(2): the run completes; then both blocks are replaced.  The payout's
    step is invalidated, its dependents compensated newest first (notify's, then credit's), the payout (not refunded) confirms again under the same key with the same
    transaction, the dependents run again: one payment on the canonical chain."""
    node.fund(rig.btc.sender(), 500_000)
    payee = rig.payees[0]
    async with rig.worker():
        h = await rig.app.astart("payout", {"id": "o-1", "to": payee, "sats": 150_000})
        first = await rig.until_done(h.id, what="the first completion")
        assert first.status == "completed", first.error
        sub = rig.sub("o-1")
        (attempt,) = rig.attempts()
        assert rig.held(sub.id) == [] and rig.reserved(sub.id), "final: coins recorded as spent"
        depth = node.height() - int(sub.block_number) + 1
        reorg = node.reorg(depth)
        assert sub.block_hash in reorg.old_hashes and attempt.tx_hash in node.mempool()
        stats = await rig.step()
        assert stats.reorg_depth == depth
        assert rig.app.status(h.id).status != "completed", "reopened for its rollback"
        assert rig.held(sub.id) == rig.reserved(sub.id), "un-finalised: the coins are held again"
        st = await rig.until_done(h.id, what="the re-completion")
    assert st.status == "completed", st.error
    assert rig.effects() == ["reserve", "credit", "notify", "unnotify", "debit", "credit", "notify"]
    final = rig.sub("o-1")
    assert (final.id, final.state, final.tx_hash) == (sub.id, "final", attempt.tx_hash)
    assert final.block_hash not in reorg.old_hashes
    assert rig.onchain(attempt.tx_hash)["blockhash"] == final.block_hash == st.output["block_hash"]
    assert rig.attempts() == [attempt], "one signed version: the same txid re-confirmed"
    (event,) = rig.app.reorgs()
    assert event.depth == depth and event.affected_txs == [attempt.tx_hash]
    assert rig.paid(payee) == [(f"{attempt.tx_hash}:0", 150_000)], "paid once on the canonical chain"
    assert rig.held(final.id) == []
