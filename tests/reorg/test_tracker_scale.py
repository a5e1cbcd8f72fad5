"""The tracker's cost per head does not grow with the number of pending transactions,
and runs waiting for confirmations hold no worker slot.

* 10 vs 10,000 synthetic pending submissions (``broadcast``, one signed attempt each,
  inserted with SQL): a head carrying one tracked transaction, and an empty head, cost
  the same RPC calls either way, both as counted by ``Tracker.step()``
  (``HeadStats.rpc_calls``) and as actually sent to the node.
* The same pending rows all overdue ("stuck"): still bounded per head, by
  ``stuck_batch``, not by how many are overdue.
* 50 runs waiting for confirmations under a worker with concurrency=2: all park (none
  holds a slot), and all complete once blocks come.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import sqlalchemy as sa
from eth_account import Account
from eth_typing import HexStr

import chainflow as cf
from chainflow.storage.schema import submissions, tx_attempts

from ..conftest import CallLog
from ._rig import CHAIN, Rig, build_rig, register_mint_flow

SYNTHETIC_SENDER = "0x00000000000000000000000000000000000000AA"


def insert_pending(rig: Rig, count: int, *, start: int, last_broadcast_block: int) -> None:
    """``count`` pending submissions with one (never mined) attempt each, straight in SQL."""
    now = time.time()
    keys = {f"synthetic-{i}": i for i in range(start, start + count)}
    with rig.app.engine.begin() as conn:
        conn.execute(submissions.insert(), [{
            "chain": CHAIN, "sender": SYNTHETIC_SENDER, "idempotency_key": key, "run_id": None, "step": None,
            "request": "{}", "finality": json.dumps({"kind": "confirmations", "n": 1}), "nonce": i,
            "state": "broadcast", "gap_fill": False, "created_at": now, "updated_at": now,
            "last_broadcast_at": now, "last_broadcast_block": last_broadcast_block,
        } for key, i in keys.items()])
        ids = conn.execute(sa.select(submissions.c.id, submissions.c.idempotency_key)
                           .where(submissions.c.sender == SYNTHETIC_SENDER)).all()
        conn.execute(tx_attempts.insert(), [{
            "submission_id": sub_id, "chain": CHAIN, "tx_hash": f"0x{keys[key]:064x}", "raw": b"\x00",
            "fees": "{}", "created_at": now,
        } for sub_id, key in ids if key in keys])


def pending_count(rig: Rig) -> int:
    with rig.app.engine.begin() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(submissions)
                                .where(submissions.c.state == "broadcast")).scalar_one())


def tracked_transfer(rig: Rig, key: str) -> str:
    """A real transaction the tracker must settle: signed here, recorded as a pending
    submission (Confirmations(1)), then broadcast (automine puts it in the next block)."""
    nonce = rig.w3.eth.get_transaction_count(rig.minter.address, "pending")
    base = int(rig.w3.eth.get_block("latest").get("baseFeePerGas") or 10**9)
    signed = Account.sign_transaction({
        "type": 2, "chainId": int(rig.w3.eth.chain_id), "nonce": nonce, "to": rig.net.accounts()[2].address,
        "value": 1, "gas": 21_000, "maxFeePerGas": 2 * base + 10**9, "maxPriorityFeePerGas": 10**9,
    }, rig.minter.private_key)
    tx_hash = "0x" + bytes(signed.hash).hex()
    now = time.time()
    with rig.app.engine.begin() as conn:
        inserted = conn.execute(submissions.insert().values(
            chain=CHAIN, sender=rig.minter.address, idempotency_key=key, request="{}",
            finality=json.dumps({"kind": "confirmations", "n": 1}), nonce=nonce, state="broadcast",
            created_at=now, updated_at=now, last_broadcast_block=rig.head(),
        )).inserted_primary_key
        assert inserted is not None
        sub_id = inserted[0]
        conn.execute(tx_attempts.insert().values(submission_id=sub_id, chain=CHAIN, tx_hash=tx_hash,
                                                 raw=bytes(signed.raw_transaction), fees="{}", created_at=now))
    rig.w3.eth.send_raw_transaction(signed.raw_transaction)
    # automine seals the block asynchronously on anvil: the head must carry it before the step
    rig.w3.eth.wait_for_transaction_receipt(HexStr(tx_hash), timeout=10, poll_latency=0.01)
    return tx_hash


async def measure(rig: Rig, key: str) -> dict[str, Any]:
    """RPC cost of a head carrying one tracked transaction, then of an empty head."""
    tracked_transfer(rig, key)
    calls = rig.adapter.rpc.calls
    busy = await rig.step()
    busy_calls = rig.adapter.rpc.calls - calls
    assert (busy.new_blocks, busy.matched, busy.settled, busy.reorg_depth) == (1, 1, 1, 0)
    assert rig.sub(key).state == "final"
    await rig.mine(1)
    calls = rig.adapter.rpc.calls
    idle = await rig.step()
    idle_calls = rig.adapter.rpc.calls - calls
    assert (idle.new_blocks, idle.matched) == (1, 0)
    assert busy.rebroadcasts == busy.bumps == idle.rebroadcasts == idle.bumps == 0
    return {"busy": busy.rpc_calls, "busy_sent": busy_calls, "idle": idle.rpc_calls, "idle_sent": idle_calls}


async def test_rpc_calls_per_head_do_not_grow_with_pending(net: Any, db_url: str, ledger: CallLog) -> None:
    # re-broadcast clock far away: the pending rows are recent, not yet "stuck"
    rig = build_rig(net, db_url, ledger, rebroadcast_blocks=1_000)
    try:
        await rig.step()
        insert_pending(rig, 10, start=0, last_broadcast_block=rig.head())
        assert pending_count(rig) == 10
        small = await measure(rig, "real-1")
        insert_pending(rig, 9_990, start=10, last_broadcast_block=rig.head())
        assert pending_count(rig) == 10_000
        started = time.monotonic()
        large = await measure(rig, "real-2")
        elapsed = time.monotonic() - started
    finally:
        await rig.close()
    print(f"rpc per head, 10 pending: {small}; 10,000 pending: {large}")
    assert large == small, f"10 pending: {small}; 10,000 pending: {large}"
    # head + block hashes (+ one receipt for the match); never anything per pending tx
    assert small["idle"] <= 3 and small["busy"] <= 4
    assert elapsed < 20, f"two heads over 10,000 pending took {elapsed:.1f}s"


async def test_stuck_handling_per_head_is_bounded_by_stuck_batch(net: Any, db_url: str, ledger: CallLog) -> None:
    batch = 8
    rig = build_rig(net, db_url, ledger, rebroadcast_blocks=1, stuck_batch=batch)
    try:
        await rig.step()
        insert_pending(rig, 100, start=0, last_broadcast_block=0)  # all long overdue
        await rig.mine(1)
        small = await rig.step()
        insert_pending(rig, 9_900, start=100, last_broadcast_block=0)
        await rig.mine(1)
        large = await rig.step()
    finally:
        await rig.close()
    assert small.rebroadcasts == large.rebroadcasts == batch
    assert large.rpc_calls == small.rpc_calls, (small, large)
    # head, block hashes, the sender's nonce, then mempool check + re-broadcast per stuck one
    assert large.rpc_calls <= 3 + 2 * batch


@pytest.mark.slow
async def test_fifty_runs_waiting_for_confirmations_hold_no_worker_slot(rig: Rig) -> None:
    register_mint_flow(rig, cf.Confirmations(2))
    rig.net.set_automine(False)  # the transactions wait in the mempool until the test mines
    runs = 50
    async with rig.worker(concurrency=2, track=True) as worker:
        handles = [await rig.app.astart("mint_flow", {"id": f"order-{i}"}) for i in range(runs)]
        ids = [h.id for h in handles]
        end = time.monotonic() + 90
        while True:
            statuses = [await rig.status(i) for i in ids]
            if all(s.status == "waiting" for s in statuses):
                break
            assert time.monotonic() < end, f"{sum(s.status == 'waiting' for s in statuses)}/{runs} parked"
            assert len(worker.executions) <= 2
            await asyncio.sleep(0.05)
        assert all(s.waiting_on and s.waiting_on[0].startswith("tx:") for s in statuses)
        await asyncio.sleep(0.2)
        assert worker.executions == {}, "parked runs hold no worker slot"
        pending = rig.net.mempool()["pending"]
        assert sum(len(txs) for txs in pending.values()) == runs, "every run broadcast before parking"
        assert {s.state for s in rig.subs()} == {"broadcast"}

        end = time.monotonic() + 90
        while True:
            await rig.mine(1)
            statuses = [await rig.status(i) for i in ids]
            if all(s.done for s in statuses):
                break
            assert time.monotonic() < end, f"{sum(s.done for s in statuses)}/{runs} done"
            await asyncio.sleep(0.2)
    assert all(s.status == "completed" for s in statuses), [s.error for s in statuses if s.error]
    effects = rig.effects()
    assert effects.count("reserve") == effects.count("credit") == effects.count("notify") == runs
    subs = rig.subs()
    assert len(subs) == runs and {s.state for s in subs} == {"final"}
    nonces = sorted(int(s.nonce) for s in subs)
    assert nonces == list(range(nonces[0], nonces[0] + runs)), "one nonce each, no gaps, no repeats"
    assert rig.balance() == 5 * runs
