"""A sender whose balance cannot pay for what it is asked to send.

* A fee bump it cannot fund must not lose the version it can fund: the original is
  affordable, a base-fee spike makes anvil drop it from its pool (anvil drops
  transactions whose fee cap is under the base fee when it mines), and the tracker's
  replacement costs more than the sender holds ("Insufficient funds for gas * price +
  value").  Once the market is back where the original is valid, the node must be sent
  the original again: the same payment and nonce, signed and stored.  Re-sending only
  the newest bytes would hold the payment, and every later nonce of the sender, until a
  top-up, although chainflow holds valid signed bytes for it.
* Topped up while the fees stay above every version: the tracker still bumps.
* A payment above the balance is no revert, and fails alike on a node that refuses it
  at estimation (geth's wording, the in-process EVM) and on one that does not (anvil).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import chainflow as cf
from adapters.evm import EvmReceipt
from chainflow.chain.adapter import BroadcastResult
from chainflow.storage import codec

from ._rig import CHAIN, Rig, register_mint_flow


def _max_fee(version: Any) -> int:
    return int(json.loads(version.fees)["max_fee_per_gas"])


async def _spiked(rig: Rig, base_fee: int, done: Any) -> None:
    """Mine blocks at ``base_fee`` and step the tracker at it until ``done()`` holds:
    anvil prices the pending block (what a broadcast is checked against) from the last
    one, so the spike is set again after each block."""
    for _ in range(10):
        rig.net.set_next_base_fee(base_fee)
        await rig.mine(1)
        rig.net.set_next_base_fee(base_fee)
        await rig.step()
        if done():
            return
    raise AssertionError("the tracker did not act on the spike")


async def _bump_refused_for_funds(rig: Rig) -> tuple[str, Any, Any]:
    """Inside the rig's worker: "poor-1" waits on its mint, the sender can pay for its
    first version plus 5 %, and the base fee has risen above that version's cap, so
    anvil dropped it and the tracker's +10 % (at least) bump is refused for funds."""
    register_mint_flow(rig, cf.Confirmations(1))
    rig.net.set_automine(False)
    await rig.step()
    run_id = (await rig.app.astart("mint_flow", {"id": "poor-1"})).id
    await rig.wait_status(run_id, ("waiting",))
    sub = rig.sub("poor-1")
    (first,) = rig.attempts(sub.id)
    gas = int(codec.loads(sub.request)["gas"])
    rig.net.set_balance(rig.minter.address, gas * _max_fee(first) * 105 // 100)
    await rig.step()
    await _spiked(rig, _max_fee(first) * 21 // 20, lambda: len(rig.attempts(sub.id)) >= 2)
    versions = rig.attempts(sub.id)
    assert len(versions) == 2
    assert rig.chain_tx(first.tx_hash) is None, "anvil dropped the underpriced original"
    assert rig.chain_tx(versions[1].tx_hash) is None, "the bump was refused for funds"
    return run_id, sub, first


@pytest.mark.parametrize("node_kind", ["anvil"], indirect=True)
async def test_a_bump_refused_for_funds_falls_back_to_the_fundable_original(rig: Rig) -> None:
    stuck: list[cf.Event] = []
    rig.tracker.events.on("submission_stuck")(stuck.append)
    async with rig.worker():
        run_id, sub, first = await _bump_refused_for_funds(rig)
        await rig.mine(1)  # at the spike: the bump is refused again, and the original too
        await rig.step()
        # an alert: someone may top the sender up; the payment is not failed
        assert rig.sub("poor-1").stuck_since is not None
        assert len(stuck) == 1 and stuck[0].error is not None and "insufficient funds" in stuck[0].error.lower()
        rig.net.set_next_base_fee(_max_fee(first) // 4)  # the market returns
        await rig.drive(lambda: rig.app.status(run_id).done, timeout=10.0, what="the original mined")
    st = rig.app.status(run_id)
    assert st.status == "completed", st.error
    assert st.output["tx"] == first.tx_hash
    assert len(rig.attempts(sub.id)) == 2, "nothing new signed"
    assert rig.sub("poor-1").stuck_since is None


@pytest.mark.parametrize("node_kind", ["anvil"], indirect=True)
async def test_earlier_versions_are_offered_one_a_round_newest_first(rig: Rig) -> None:
    """Three versions, the newest unfundable, the two before it underpriced: each round
    sends the newest and one earlier version, the next newest first, in turn."""
    register_mint_flow(rig, cf.Confirmations(1))
    rig.net.set_automine(False)
    sent: list[bytes] = []
    send = rig.adapter.broadcast

    async def recording(raw: bytes) -> BroadcastResult:
        sent.append(bytes(raw))
        return await send(raw)

    rig.adapter.broadcast = recording  # type: ignore[method-assign]
    async with rig.worker():
        await rig.step()
        run_id = (await rig.app.astart("mint_flow", {"id": "poor-1"})).id
        await rig.wait_status(run_id, ("waiting",))
        sub = rig.sub("poor-1")
        (first,) = rig.attempts(sub.id)
        await _spiked(rig, _max_fee(first) * 21 // 20, lambda: len(rig.attempts(sub.id)) >= 2)
        second = rig.attempts(sub.id)[1]
        gas = int(codec.loads(sub.request)["gas"])
        rig.net.set_balance(rig.minter.address, gas * _max_fee(second) * 105 // 100)
        spike = _max_fee(second) * 21 // 20
        await _spiked(rig, spike, lambda: len(rig.attempts(sub.id)) >= 3)
        third = rig.attempts(sub.id)[2]
        rounds = []
        for _ in range(3):
            before = len(sent)
            await _spiked(rig, spike, lambda: True)
            rounds.append(sent[before:])
        assert rounds == [[third.raw, second.raw], [third.raw, first.raw], [third.raw, second.raw]]
        rig.net.set_next_base_fee(_max_fee(first) // 4)
        await rig.drive(lambda: rig.app.status(run_id).done, timeout=10.0, what="an earlier version mined")
    st = rig.app.status(run_id)
    assert st.status == "completed", st.error
    assert st.output["tx"] == first.tx_hash  # the next in turn, and the node keeps it
    assert len(rig.attempts(sub.id)) == 3


@pytest.mark.parametrize("node_kind", ["anvil"], indirect=True)
async def test_a_sender_topped_up_while_fees_stay_high_is_bumped_again(rig: Rig) -> None:
    async with rig.worker():
        run_id, sub, _ = await _bump_refused_for_funds(rig)
        rig.net.set_balance(rig.minter.address, 10**22)
        newest = _max_fee(rig.attempts(sub.id)[-1])
        await _spiked(rig, newest * 21 // 20, lambda: len(rig.attempts(sub.id)) >= 3)
        third = rig.attempts(sub.id)[2]
        await rig.drive(lambda: rig.app.status(run_id).done, timeout=10.0, what="the new bump mined")
    st = rig.app.status(run_id)
    assert st.status == "completed", st.error
    assert st.output["tx"] == third.tx_hash


async def test_a_payment_above_the_balance_fails_the_step_without_a_nonce(rig: Rig) -> None:
    """Geth (and the in-process EVM) refuse it at estimation, anvil estimates it without
    complaint: on both, the step fails as a submission that cannot be made, not as a
    contract revert, and no nonce is taken for it."""

    @rig.app.workflow("pay")
    async def pay(ctx: cf.Context, ev: dict[str, Any]) -> str:
        r = await ctx.submit("pay", chain=CHAIN, tx=ev["tx"], idempotency_key=ev["key"])
        assert isinstance(r, EvmReceipt)
        return r.tx_hash

    balance = int(rig.w3.eth.get_balance(rig.minter.address))
    tx = {"to": rig.net.accounts()[1].address, "value": balance * 2}
    async with rig.worker():
        await rig.step()
        run_id = (await rig.app.astart("pay", {"key": "broke-1", "tx": tx})).id
        st = await rig.wait_status(run_id)
    assert st.status == "failed" and st.error is not None
    message = st.error["message"]
    assert "SubmissionFailedError" in message and "insufficient funds" in message.lower(), message
    assert "TxRevertedError" not in message and "reverted" not in message, message
    sub = rig.sub("broke-1")
    assert sub.nonce is None and rig.attempts(sub.id) == []
