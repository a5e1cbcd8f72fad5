"""On-chain compensations: mint, a dependent step fails for good, the compensation
burns what was minted through the exactly-once path -- once, although the worker
running it is SIGKILLed after the burn's signed bytes are committed, after its
broadcast and after it is final but before the compensation is journaled.

Checked on the chain (one burn transaction per intent, balances back where they
started) and in the tables (one submission per burn key, the compensation journaled
ok once), on anvil and on the in-process EVM, with real worker processes."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.storage import schema
from devnet import Anvil, InProcessEVM
from tests.conftest import require_anvil
from tests.engine._util import claim_count

from .mint_worker import build
from .test_submission import Chain, _stop, _wait_done, _worker

_BURN = "0x9dc29fac"  # burn(address,uint256)


@pytest.fixture(params=[pytest.param("inprocess"), pytest.param("anvil", marks=pytest.mark.anvil)])
def net(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A node mining each transaction at once and a block every second (so the
    tracker sees confirmations accrue and re-examines what it re-broadcasts)."""
    if request.param == "anvil":
        require_anvil()
        node: Any = Anvil(block_time=1, extra_args=["--mixed-mining"])
    else:
        node = InProcessEVM(block_time=1)
    with node:
        yield node


def _burns(chain: Chain) -> list[Any]:
    return [tx for tx in chain.sender_txs()
            if tx["to"] == chain.token.address and "0x" + bytes(tx["input"]).hex()[:8] == _BURN]


def _transfers(chain: Chain, **filters: str) -> list[tuple[str, str, int]]:
    logs = chain.token.events.Transfer().get_logs(from_block=0, argument_filters=filters or None)
    return sorted((e["args"]["sender"], e["args"]["receiver"], int(e["args"]["value"])) for e in logs)


@pytest.mark.slow
def test_burn_is_submitted_once_through_worker_kills(net: Any, db_url: str) -> None:
    chain = Chain(net)
    holders = [a.address for a in net.accounts()[1:3]]
    client = build(db_url, net.rpc_url, chain.token.address, chain.minter.private_key)
    supply = chain.token.functions.totalSupply().call()
    before = {h: chain.token.functions.balanceOf(h).call() for h in holders}
    amounts = {holders[0]: 700, holders[1]: 900}
    ids = [client.start("mint-then-fail", {"id": f"pay-{n}", "to": h, "amount": amounts[h]}).id
           for n, h in enumerate(holders)]

    kills = []
    for phase in ("burn-signed", "burn-broadcast", "burn-final"):
        proc = _worker(db_url, chain, crash=f"{phase}:1", name=phase)
        try:
            # returns early (False) only if the worker dies: finished runs mean the burn
            # never reached the crash point
            assert not _wait_done(client, ids, 90, proc), f"the runs finished without reaching {phase}"
        finally:
            _stop(proc)
        assert proc.returncode == -signal.SIGKILL, f"the worker crashing at {phase} exited with {proc.returncode}"
        kills.append(phase)
    proc = _worker(db_url, chain, name="clean")
    try:
        assert _wait_done(client, ids, 120, proc), "runs did not finish after the last restart"
    finally:
        _stop(proc)
    assert len(kills) == 3

    for run_id in ids:
        st = client.status(run_id)
        assert st.status == "failed"
        assert st.error is not None
        assert "ledger account closed" in st.error["message"] and "compensation_failures" not in st.error
        assert st.compensations == {"mint": "ok"}

    # on chain: one mint and one burn per intent, balances and supply back where they were
    burns = _burns(chain)
    assert len(burns) == 2, f"expected one burn per intent, found {[tx['hash'].hex() for tx in burns]}"
    zero = "0x" + "00" * 20
    assert _transfers(chain, receiver=zero) == sorted((h, zero, a) for h, a in amounts.items())
    assert _transfers(chain, sender=zero) == sorted((zero, h, a) for h, a in amounts.items())
    assert {h: chain.token.functions.balanceOf(h).call() for h in holders} == before
    assert chain.token.functions.totalSupply().call() == supply
    nonces = sorted(int(tx["nonce"]) for tx in chain.sender_txs())
    assert nonces == list(range(len(nonces))), f"sender nonces are not contiguous: {nonces}"

    with client.engine.connect() as conn:
        subs = list(conn.execute(sa.select(schema.submissions).order_by(schema.submissions.c.id)))
        journal = list(conn.execute(sa.select(schema.journal).where(schema.journal.c.superseded == 0)))
    burn_subs = [s for s in subs if s.idempotency_key.startswith("compensate:")]
    assert len(burn_subs) == 2 and all(s.state == cf.SubmissionState.FINAL for s in burn_subs)
    assert {s.run_id for s in burn_subs} == set(ids)
    assert {s.step for s in burn_subs} == {"compensate:mint\x1fburn"}
    assert sorted(s.tx_hash.removeprefix("0x") for s in burn_subs) == \
        sorted(tx["hash"].hex().removeprefix("0x") for tx in burns)
    for run_id in ids:
        rows = [(e.branch, e.key, e.kind, e.status) for e in journal if e.run_id == run_id]
        assert [r for r in rows if r[2] == "compensation"] == [("", "compensate:mint", "compensation", "ok")]
        assert [r for r in rows if r[0] == "compensate:mint"] == [("compensate:mint", "burn", "submit", "ok")]
        comp = next(e for e in journal if e.run_id == run_id and e.key == "compensate:mint")
        burn_sub = next(s for s in burn_subs if s.run_id == run_id)
        assert burn_sub.tx_hash in comp.output


def test_keys_chainflow_makes_cannot_collide_with_forward_keys(net: Any, tmp_path: Any) -> None:
    """A forward submission may not use the prefixes chainflow's own keys live under, and outside
    a compensation the key is required: both refused before anything is journaled."""
    chain = Chain(net)
    client = build(f"sqlite:///{tmp_path / 'keys.db'}", net.rpc_url, chain.token.address,
                   chain.minter.private_key)
    tx = chain.token.functions.mint(chain.minter.address, 1)

    @client.workflow("prefixed")
    async def prefixed(ctx: cf.Context, key: str) -> None:
        await ctx.submit("mint", chain="local", tx=tx, idempotency_key=key)

    @client.workflow("keyless")
    async def keyless(ctx: cf.Context, _: Any) -> None:
        await ctx.submit("mint", chain="local", tx=tx)

    import asyncio

    from .test_submission import _run_inline

    # the prefixes of the keys chainflow makes: a compensation's, a batch row's, a gap fill's
    for key, prefix in (("compensate:abc:burn", "compensate:"), ("batch:1", "batch:"), ("gap-fill:0", "gap-fill:")):
        st = asyncio.run(_run_inline(client, "prefixed", key))
        assert st.status == "failed" and st.error is not None
        assert f"{key!r} starts with {prefix!r}, which chainflow reserves" in st.error["message"]
    st = asyncio.run(_run_inline(client, "keyless", None))
    assert st.status == "failed" and st.error is not None
    assert "submit 'mint' needs an idempotency_key" in st.error["message"]
    with client.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.submissions)).scalar() == 0
    assert chain.sender_txs() == [tx for tx in chain.sender_txs() if tx["to"] is None]  # only the deploy


async def _cancel_in_flight(client: cf.Chainflow, run_input: dict[str, Any], workflow: str,
                            cancel_when: Any) -> cf.RunStatus:
    """Run ``workflow`` in this process; cancel it once ``cancel_when(sub)`` holds for its
    submission row (``None`` when it must not be cancelled); return its final status."""
    import asyncio

    async with _in_process_worker(client):
        handle = await client.astart(workflow, run_input)
        if cancel_when is not None:
            for _ in range(600):
                with client.engine.connect() as conn:
                    sub = conn.execute(sa.select(schema.submissions).where(
                        schema.submissions.c.idempotency_key == run_input["id"])).first()
                if sub is not None and cancel_when(sub):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the submission never reached the state to cancel in")
            await client.acancel(handle.id)
        return await client.await_run(handle.id, timeout=90)


def test_a_run_cancelled_while_its_mint_is_on_the_wire_burns_it_once_final(net: Any, db_url: str) -> None:
    """The cancel cannot unsend a mint that is signed and sent: the run waits for it to
    settle, and once it is final undoes it with the submit's compensation (the burn),
    before it ends cancelled.  Checked on chain: one mint, one burn, balances back."""
    chain = Chain(net)
    client = build(db_url, net.rpc_url, chain.token.address, chain.minter.private_key)
    holder = net.accounts()[1].address
    before = chain.token.functions.balanceOf(holder).call()
    st = asyncio_run(_cancel_in_flight(client, {"id": "cancel-on-the-wire", "to": holder, "amount": 321},
                                       "mint-slowly", lambda sub: sub.state in ("signed", "broadcast", "included")))
    assert st.status == "cancelled", st.error
    assert st.compensations == {"mint": "ok"}
    zero = "0x" + "00" * 20
    assert _transfers(chain, sender=zero) == [(zero, holder, 321)]
    assert _transfers(chain, receiver=zero) == [(holder, zero, 321)]
    assert len(_burns(chain)) == 1
    assert chain.token.functions.balanceOf(holder).call() == before
    # waiting for the mint, then the burn, the cancelled run was parked, not claimed again and again
    assert claim_count(client, st.id) <= 6, claim_count(client, st.id)


def test_a_mint_cut_off_by_a_failing_sibling_branch_is_burnt_once_final(net: Any, db_url: str) -> None:
    """A branch fails while its sibling's mint is on the wire: the run's failure waits
    for the mint to settle and burns it, as it would have had the mint finished first."""
    chain = Chain(net)
    client = build(db_url, net.rpc_url, chain.token.address, chain.minter.private_key)
    holder = net.accounts()[2].address
    st = asyncio_run(_cancel_in_flight(client, {"id": "sibling-fails", "to": holder, "amount": 55},
                                       "mint-beside-a-failure", None))
    assert st.status == "failed" and st.error is not None and "ledger account closed" in st.error["message"]
    assert st.compensations == {"0/mint": "ok"}
    zero = "0x" + "00" * 20
    assert _transfers(chain, sender=zero) == [(zero, holder, 55)]
    assert _transfers(chain, receiver=zero) == [(holder, zero, 55)]


def test_a_run_cancelled_while_sharing_another_runs_mint_leaves_it_alone(net: Any, db_url: str) -> None:
    """A run that found another run's intent under its key and waits on it did not open
    that payment: cancelled, it ends without undoing it, and the opener completes."""

    chain = Chain(net)
    client = build(db_url, net.rpc_url, chain.token.address, chain.minter.private_key)
    holder = net.accounts()[1].address
    ev = {"id": "shared", "to": holder, "amount": 9}

    async def scenario() -> tuple[cf.RunStatus, cf.RunStatus]:
        async with _in_process_worker(client):
            opener, sharer = await _sharing(client, ev)
            await client.acancel(sharer.id)
            return (await client.await_run(opener.id, timeout=90), await client.await_run(sharer.id, timeout=90))

    first, second = asyncio_run(scenario())
    assert first.status == "completed" and second.status == "cancelled"
    assert second.compensations == {}
    assert _burns(chain) == []
    zero = "0x" + "00" * 20
    assert _transfers(chain, sender=zero) == [(zero, holder, 9)]


@contextlib.asynccontextmanager
async def _in_process_worker(client: cf.Chainflow) -> AsyncIterator[None]:
    import asyncio

    stop = asyncio.Event()
    worker = asyncio.create_task(client.worker(concurrency=4, poll_interval=0.02).run(stop))
    try:
        yield
    finally:
        stop.set()
        await worker


async def _sharing(client: cf.Chainflow, ev: dict[str, Any]) -> tuple[cf.RunHandle, cf.RunHandle]:
    """Two "mint-slowly" runs of ``ev``: the first opens the mint, the second is started
    once it is signed and returned once it has found it and waits on it."""
    opener = await client.astart("mint-slowly", ev)
    await _until(client, schema.submissions, schema.submissions.c.state.in_(("signed", "broadcast", "included")))
    sharer = await client.astart("mint-slowly", ev)
    await _until(client, schema.sharers, schema.sharers.c.run_id == sharer.id)
    return opener, sharer


async def _until(client: cf.Chainflow, table: sa.Table, found: Any) -> None:
    """Poll (up to 30 s) until a row of ``table`` matching ``found`` exists."""
    import asyncio

    for _ in range(600):
        with client.engine.connect() as conn:
            if conn.execute(sa.select(table).where(found)).first() is not None:
                return
        await asyncio.sleep(0.05)


def asyncio_run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


@pytest.mark.parametrize("order", ["opener-first", "sharer-first"])
def test_a_shared_mint_cut_off_in_both_runs_is_burnt_once(net: Any, db_url: str, order: str) -> None:
    """Two runs wait on one mint (the second found the first's intent under its key) and
    both are cancelled while it is on the wire, in either order: the first to stop
    leaves the mint to the other, which still wants it; the last undoes it, once."""

    chain = Chain(net)
    client = build(db_url, net.rpc_url, chain.token.address, chain.minter.private_key)
    holder = net.accounts()[1].address
    ev = {"id": "shared-both", "to": holder, "amount": 11}

    async def scenario() -> tuple[cf.RunStatus, cf.RunStatus]:
        async with _in_process_worker(client):
            opener, sharer = await _sharing(client, ev)
            first, second = (opener, sharer) if order == "opener-first" else (sharer, opener)
            await client.acancel(first.id)
            done = await client.await_run(first.id, timeout=90)
            await client.acancel(second.id)
            later = await client.await_run(second.id, timeout=90)
            return (done, later) if order == "opener-first" else (later, done)

    opened, shared = asyncio_run(scenario())
    assert opened.status == "cancelled" and shared.status == "cancelled"
    assert {**opened.compensations, **shared.compensations} == {"mint": "ok"}
    zero = "0x" + "00" * 20
    assert _transfers(chain, sender=zero) == [(zero, holder, 11)]
    assert _transfers(chain, receiver=zero) == [(holder, zero, 11)]
    assert len(_burns(chain)) == 1
