"""After a reorg, the competing branch holds a *different* transaction with our nonce,
signed with the same key outside chainflow (eth-account directly).  Our signed bytes
can never be mined again: the step fails with SubmissionFailedError and the run's
compensations run (never a second nonce, never a re-sign).

Both moments: the mint merely included (before finality: the run is still parked on
it), and the mint final with the run completed (after finality: the rollback
compensates the dependents, the resumed submit then fails and the rest is compensated).
"""

from __future__ import annotations

import pytest

import chainflow as cf
from devnet import mark_fork_point

from ._rig import Rig, register_mint_flow


@pytest.mark.parametrize("how", ["anvil_reorg", "snapshot"])
@pytest.mark.parametrize("when", ["before_finality", "after_finality"])
async def test_nonce_taken_by_foreign_tx_in_new_branch_fails_step_and_compensates(
        rig: Rig, how: str, when: str) -> None:
    confirmations = 5 if when == "before_finality" else 2
    register_mint_flow(rig, cf.Confirmations(confirmations))
    app, net = rig.app, rig.net
    async with rig.worker():
        await rig.step()
        point = mark_fork_point(net) if how == "snapshot" else None
        h = await app.astart("mint_flow", {"id": "order-1"})
        if when == "before_finality":
            await rig.wait_status(h.id, ("waiting",))
            rig.mined_block(rig.attempts(rig.sub("order-1").id)[0].tx_hash)
            await rig.step()
            assert rig.sub("order-1").state == "included"
            assert rig.effects() == ["reserve"]
        else:
            await rig.drive(lambda: rig.app.status(h.id).done, what="the first completion")
            assert rig.app.status(h.id).status == "completed"
            assert rig.effects() == ["reserve", "credit", "notify"]
            await rig.step()
        sub = rig.sub("order-1")
        (attempt,) = rig.attempts(sub.id)
        block, nonce = int(sub.block_number), int(sub.nonce)

        foreign = rig.foreign_tx(nonce)
        if how == "anvil_reorg":
            depth = rig.head() - block + 1  # from the mint's block up
            net.reorg(depth, [(foreign, 0)])  # the new branch carries the foreign tx where the mint was
        else:
            assert point is not None and point.height == block - 1
            assert net.revert(point.snapshot_id)
            net.rpc("eth_sendRawTransaction", foreign)
            net.mine(1)
        mined = rig.chain_tx(attempt.tx_hash)
        assert mined is None, "our mint is gone from the canonical chain"
        assert rig.w3.eth.get_transaction_count(rig.minter.address) == nonce + 1, "the nonce is used"

        stats = await rig.step()
        assert stats.reorg_depth >= 1
        await rig.drive(lambda: rig.app.status(h.id).done, what="the run to fail")

    st = await rig.status(h.id)
    assert st.status == "failed"
    assert st.error is not None and st.error["type"] == "chainflow.errors.StepError"
    assert "did not sign" in st.error["message"]
    (mint,) = [e for e in app.journal(h.id) if e.key == "mint" and not e.invalidated]
    assert mint.status == "error"
    assert mint.error is not None and mint.error["type"] == "chainflow.errors.SubmissionFailedError"

    failed = rig.sub("order-1")
    assert failed.state == "failed" and failed.nonce == nonce
    assert "chainflow did not sign" in (failed.error or "")
    assert len(rig.attempts(sub.id)) == 1, "never re-signed with another nonce"
    assert rig.chain_tx(attempt.tx_hash) is None
    assert rig.balance() == 0, "nothing was minted on the canonical chain"

    if when == "before_finality":
        assert rig.effects() == ["reserve", "unreserve"]
        assert st.compensations == {"reserve": "ok"}
    else:
        # the rollback compensated the mint's dependents, then the failed resubmission
        # compensated what was left; no burn: the mint never succeeded on this chain
        assert rig.effects() == ["reserve", "credit", "notify", "unnotify", "debit", "unreserve"]
        assert st.compensations == {"reserve": "ok"}
        assert sorted(e.key for e in rig.invalidated(h.id)) == sorted(
            ["mint", "credit", "notify", "compensate:notify", "compensate:credit"])
