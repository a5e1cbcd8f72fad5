"""Exactly-once on-chain submission against real anvil: crashes at every protocol
phase, two workers sharing one sender, fee bumps, reverts, gap fills, no key leaks.

After every scenario the chain itself is scanned: each idempotency key mints a unique
amount, so "exactly one mined tx per key" is "each amount appears once", and the
sender's nonces must be contiguous.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from web3 import Web3
from web3.types import TxData

import chainflow as cf
from adapters.evm import EvmChain, LocalSigner
from chainflow.chain.adapter import TxRejected
from chainflow.states import TERMINAL
from chainflow.storage import schema
from devnet import Anvil, deploy_token, token_contract
from tests.conftest import require_anvil

from .mint_worker import build

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anvil() -> Iterator[Anvil]:
    """Anvil mining each transaction at once *and* a block every second.  With automine
    alone, transactions that arrive out of nonce order (many runs broadcasting from one
    sender) can stay in anvil's pool for good although their nonce is next
    (foundry-rs/foundry#10122), and with no new blocks nothing ever re-examines them;
    a real chain keeps producing blocks."""
    require_anvil()
    with Anvil(block_time=1, extra_args=["--mixed-mining"]) as net:
        yield net


class Chain:
    """A token on a devnet and the views of it the assertions need."""

    def __init__(self, net: Any) -> None:
        self.net = net
        self.w3 = Web3(Web3.HTTPProvider(net.rpc_url, request_kwargs={"timeout": 10}))
        self.minter = net.accounts()[0]
        self.token = token_contract(self.w3, deploy_token(self.w3, self.minter.private_key, max_mint=10**15))
        self.first_nonce = self.w3.eth.get_transaction_count(self.minter.address)

    def minted_amounts(self) -> list[int]:
        return sorted(int(e["args"]["value"]) for e in self.token.events.Transfer().get_logs(from_block=0))

    def sender_txs(self) -> list[Any]:
        out = []
        for number in range(self.w3.eth.block_number + 1):
            # full_transactions=True: transaction dicts, which web3's stub does not tell from hashes
            for tx in cast("list[TxData]", self.w3.eth.get_block(number, full_transactions=True)["transactions"]):
                if tx["from"] == self.minter.address:
                    out.append(tx)
        return out

    def assert_exactly_once(self, amounts: list[int]) -> None:
        assert self.minted_amounts() == sorted(amounts), "a key was minted twice or never"
        nonces = sorted(int(tx["nonce"]) for tx in self.sender_txs())
        assert nonces == list(range(len(nonces))), f"sender nonces are not contiguous: {nonces}"


def _worker(url: str, chain: Chain, crash: str | None = None, name: str = "w", concurrency: int = 32) -> Any:
    env = dict(os.environ, CF_URL=url, CF_RPC=chain.net.rpc_url, CF_TOKEN=chain.token.address,
               CF_KEY=chain.minter.private_key, CF_CONCURRENCY=str(concurrency), CF_WORKER=name,
               PYTHONPATH=str(ROOT))
    env.pop("CF_CRASH_AT", None)
    if crash:
        env["CF_CRASH_AT"] = crash
    return subprocess.Popen([sys.executable, str(ROOT / "tests/submission/mint_worker.py")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)


def _statuses(app: cf.Chainflow, ids: list[str]) -> dict[str, str]:
    with app.engine.connect() as conn:
        rows = conn.execute(sa.select(schema.runs.c.id, schema.runs.c.status).where(schema.runs.c.id.in_(ids)))
        return {r.id: r.status for r in rows}


def _wait_done(app: cf.Chainflow, ids: list[str], timeout: float, proc: Any = None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(s in TERMINAL for s in _statuses(app, ids).values()):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def _stop(proc: Any) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_crash_at_every_phase_keeps_exactly_once(anvil: Anvil, db_url: str) -> None:
    chain = Chain(anvil)
    client = build(db_url, anvil.rpc_url, chain.token.address, chain.minter.private_key)
    rng = random.Random(int(os.environ.get("CF_CRASH_SEED", "7")))
    amounts: list[int] = []
    ids: list[str] = []
    kills = 0

    def start(count: int) -> list[str]:
        batch = []
        for _ in range(count):
            amount = len(amounts) + 1
            amounts.append(amount)
            batch.append(client.start("mint", {"id": f"pay-{amount}", "amount": amount},
                                      idempotency_key=f"run-{amount}").id)
        ids.extend(batch)
        return batch

    for phase in ("allocated", "signed", "broadcast", "final"):
        batch = start(40)
        for _ in range(3):  # three SIGKILLs at this phase, each at a different occurrence
            proc = _worker(db_url, chain, crash=f"{phase}:{rng.randint(1, 8)}", concurrency=8)
            if _wait_done(client, batch, 60, proc):
                _stop(proc)
                break
            kills += proc.wait(30) == -signal.SIGKILL
    batch = start(60)
    for _ in range(6):  # and at random moments, from outside
        proc = _worker(db_url, chain)
        time.sleep(rng.uniform(0.3, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    proc = _worker(db_url, chain)
    try:
        assert _wait_done(client, ids, 180), f"unfinished: {[s for s in _statuses(client, ids).values() if s not in TERMINAL]}"
    finally:
        _stop(proc)
    assert len(ids) >= 200 and kills >= 10
    assert set(_statuses(client, ids).values()) == {"completed"}
    chain.assert_exactly_once(amounts)
    with client.engine.connect() as conn:  # one live journal entry per run's submit step
        per_run = conn.execute(
            sa.select(schema.journal.c.run_id, sa.func.count())
            .where(schema.journal.c.kind == "submit", schema.journal.c.superseded == 0)
            .group_by(schema.journal.c.run_id)
        ).all()
    assert len(per_run) == len(ids) and all(n == 1 for _, n in per_run)
    _assert_no_key(client, chain.minter.private_key)


@pytest.mark.slow
def test_two_workers_share_one_sender_pipelined(pg_url: str) -> None:
    require_anvil()
    with Anvil(block_time=1) as net:
        chain = Chain(net)
        client = build(pg_url, net.rpc_url, chain.token.address, chain.minter.private_key)
        amounts = list(range(1, 501))
        ids = [client.start("mint", {"id": f"k{a}", "amount": a}, idempotency_key=f"k{a}").id for a in amounts]
        workers = [_worker(pg_url, chain, name=f"w{i}", concurrency=64) for i in range(2)]
        try:
            assert _wait_done(client, ids, 240)
        finally:
            for w in workers:
                _stop(w)
        assert set(_statuses(client, ids).values()) == {"completed"}
        chain.assert_exactly_once(amounts)
        with client.engine.connect() as conn:
            attempts = conn.execute(
                sa.select(sa.func.count()).select_from(schema.tx_attempts).group_by(schema.tx_attempts.c.submission_id)
            ).scalars().all()
        assert max(attempts) <= 2 and sum(1 for a in attempts if a > 1) <= 10, "replacement storm"
        blocks = {tx["blockNumber"] for tx in chain.sender_txs()}
        assert len(blocks) < 100, f"not pipelined: 500 mints took {len(blocks)} blocks"


async def _run_inline(app: cf.Chainflow, name: str, inp: Any, until: Any = None, timeout: float = 60) -> cf.RunStatus:
    stop = asyncio.Event()
    worker = asyncio.create_task(app.worker(concurrency=8, poll_interval=0.02).run(stop))
    try:
        handle = await app.astart(name, inp)
        if until is not None:
            await until(handle.id)
        return await app.await_run(handle.id, timeout=timeout)
    finally:
        stop.set()
        await worker


def _app(url: str, chain: Chain, **tracker: Any) -> tuple[cf.Chainflow, EvmChain]:
    adapter = EvmChain("local", chain.net.rpc_url, LocalSigner.from_key(chain.minter.private_key))
    tracker.setdefault("poll_interval", 0.05)
    return cf.Chainflow(url, chains=[adapter], tracker=cf.TrackerConfig(**tracker)), adapter


def test_fee_bump_replaces_a_stuck_tx(tmp_path: Path) -> None:
    require_anvil()
    with Anvil(no_mining=True) as net:
        net.set_automine(True)  # deploying the token needs mining
        chain = Chain(net)
        net.set_automine(False)
        app, _ = _app(f"sqlite:///{tmp_path / 'bump.db'}", chain, bump_blocks=1, rebroadcast_blocks=1)

        @app.workflow("mint")
        async def mint(ctx: cf.Context, amount: int) -> dict[str, Any]:
            r = await ctx.submit("mint", chain="local", tx=chain.token.functions.mint(chain.minter.address, amount),
                                 idempotency_key="bump-1", finality=cf.Confirmations(1))
            return {"tx": r.tx_hash}

        def attempts() -> list[Any]:
            with app.engine.connect() as conn:
                return list(conn.execute(sa.select(schema.tx_attempts).order_by(schema.tx_attempts.c.id)))

        async def hold_then_release(run_id: str) -> None:
            while not attempts():
                await asyncio.sleep(0.05)
            first = __import__("json").loads(attempts()[0].fees)
            # every block's base fee above the tx's fee cap: it cannot be mined, only replaced
            for _ in range(100):
                await asyncio.to_thread(net.set_next_base_fee, first["max_fee_per_gas"] * 21 // 20)
                await asyncio.to_thread(net.mine, 1)
                # the pending block too, so a re-broadcast of the old bytes is refused
                await asyncio.to_thread(net.set_next_base_fee, first["max_fee_per_gas"] * 21 // 20)
                await asyncio.sleep(0.2)
                if len(attempts()) >= 2:
                    break
            for _ in range(10):
                await asyncio.to_thread(net.mine, 1)
                await asyncio.sleep(0.1)

        st = asyncio.run(_run_inline(app, "mint", 7, until=hold_then_release))
        assert st.status == "completed", st.error
        tries = attempts()
        assert len(tries) >= 2
        import json

        old, new = json.loads(tries[0].fees), json.loads(tries[1].fees)
        for field in old:
            assert new[field] * 8 >= old[field] * 9, f"{field} raised by less than 12.5%"
        mined = [tx for tx in chain.sender_txs() if tx["to"] == chain.token.address]
        assert len(mined) == 1 and "0x" + mined[0]["hash"].hex().removeprefix("0x") == st.output["tx"]
        assert mined[0]["hash"].hex().removeprefix("0x") != tries[0].tx_hash.removeprefix("0x")


def test_bumps_stop_at_the_fee_budget_and_the_mint_is_flagged_stuck_not_failed(tmp_path: Path) -> None:
    """A fee spike is followed up to ``max_fee_per_gas`` and no further: the first bump
    fits the budget, the next would not be a valid replacement within it, so the
    submission is flagged stuck and its last version kept on the wire; once the base fee
    falls, that version is mined and the flag clears.  Fees read from the chain."""
    require_anvil()
    with Anvil(no_mining=True) as net:
        net.set_automine(True)  # deploying the token needs mining
        chain = Chain(net)
        net.set_automine(False)
        signer = LocalSigner.from_key(chain.minter.private_key)
        market = asyncio.run(EvmChain("probe", net.rpc_url, signer)._fees.quote())  # no block until the first sign
        budget = market["max_fee_per_gas"] * 115 // 100  # room for one bump of 12.5 %, not for two
        adapter = EvmChain("local", net.rpc_url, signer, max_fee_per_gas=budget)
        app = cf.Chainflow(f"sqlite:///{tmp_path / 'budget.db'}", chains=[adapter],
                           tracker=cf.TrackerConfig(poll_interval=0.05, bump_blocks=1, rebroadcast_blocks=1))

        @app.workflow("mint")
        async def mint(ctx: cf.Context, amount: int) -> dict[str, Any]:
            r = await ctx.submit("mint", chain="local", tx=chain.token.functions.mint(chain.minter.address, amount),
                                 idempotency_key="budget-1", finality=cf.Confirmations(1))
            return {"tx": r.tx_hash}

        def rows() -> tuple[list[Any], Any]:
            with app.engine.connect() as conn:
                return (list(conn.execute(sa.select(schema.tx_attempts).order_by(schema.tx_attempts.c.id))),
                        conn.execute(sa.select(schema.submissions)).first())

        async def spike_then_fall(run_id: str) -> None:
            while not rows()[0]:
                await asyncio.sleep(0.05)
            for _ in range(150):  # every block's base fee above the budget: nothing can be mined
                await asyncio.to_thread(net.set_next_base_fee, budget * 2)
                await asyncio.to_thread(net.mine, 1)
                await asyncio.to_thread(net.set_next_base_fee, budget * 2)
                await asyncio.sleep(0.1)
                if rows()[1].stuck_since is not None:
                    break
            attempts, sub = rows()
            assert sub.stuck_since is not None, "never flagged stuck"
            assert sub.state != "failed" and (await app.astatus(run_id)).status not in TERMINAL
            assert len(attempts) == 2, [a.fees for a in attempts]
            await asyncio.to_thread(net.set_next_base_fee, market["max_fee_per_gas"] // 4)
            for _ in range(20):
                await asyncio.to_thread(net.mine, 1)
                await asyncio.sleep(0.2)
                if (await app.astatus(run_id)).status in TERMINAL:
                    break

        st = asyncio.run(_run_inline(app, "mint", 7, until=spike_then_fall))
        assert st.status == "completed", st.error
        attempts, sub = rows()
        import json

        first, second = (json.loads(a.fees) for a in attempts)
        # the market during the spike asked more than the budget: the bump offered all of it
        assert first == market and second["max_fee_per_gas"] == budget
        mined = [tx for tx in chain.sender_txs() if tx["to"] == chain.token.address]
        assert len(mined) == 1 and mined[0]["maxFeePerGas"] <= budget
        assert mined[0]["hash"].hex().removeprefix("0x") == attempts[1].tx_hash.removeprefix("0x") == \
            st.output["tx"].removeprefix("0x")
        assert sub.stuck_since is None, "the stuck flag stays after the mint was mined"


def test_revert_fails_the_step_with_reason_and_compensates(anvil: Anvil, db_url: str) -> None:
    chain = Chain(anvil)
    app, _ = _app(db_url, chain)
    undone: list[str] = []

    @app.workflow("mint")
    async def mint(ctx: cf.Context, amount: int) -> None:
        await ctx.step("reserve", lambda: "r1", compensate=lambda r: undone.append(f"unreserve {r}"))
        await ctx.step("hold", lambda: "h1", compensate=lambda h: undone.append(f"release {h}"))
        await ctx.submit("mint", chain="local", tx=chain.token.functions.mint(chain.minter.address, amount),
                         idempotency_key=f"too-much-{amount}")

    st = asyncio.run(_run_inline(app, "mint", 10**18))
    assert st.status == "failed"
    assert st.error is not None
    assert "cap exceeded" in st.error["message"]
    assert undone == ["release h1", "unreserve r1"]
    assert chain.minted_amounts() == []  # nothing mined, no nonce burnt
    assert [tx["nonce"] for tx in chain.sender_txs()] == [0]


def test_permanent_signing_failure_is_gap_filled(anvil: Anvil, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain(anvil)
    app, adapter = _app(f"sqlite:///{tmp_path / 'gap.db'}", chain)
    sign = EvmChain.sign
    failed = {"n": 0}

    async def sign_once_broken(self: EvmChain, request: dict[str, Any], nonce: int, fees: Any) -> Any:
        if request["to"] == chain.token.address and failed["n"] == 0:
            failed["n"] += 1
            raise TxRejected("HSM refused the key", reverted=False)
        return await sign(self, request, nonce, fees)

    monkeypatch.setattr(EvmChain, "sign", sign_once_broken)

    @app.workflow("mint")
    async def mint(ctx: cf.Context, amount: int) -> str:
        r = await ctx.submit("mint", chain="local", tx=chain.token.functions.mint(chain.minter.address, amount),
                             idempotency_key=f"gap-{amount}")
        return r.tx_hash

    first = asyncio.run(_run_inline(app, "mint", 1))
    assert first.status == "failed" and first.error is not None and "HSM refused" in first.error["message"]
    second = asyncio.run(_run_inline(app, "mint", 2))
    assert second.status == "completed", second.error
    assert chain.minted_amounts() == [2]
    txs = chain.sender_txs()
    assert sorted(tx["nonce"] for tx in txs) == list(range(len(txs)))  # the gap was burned
    assert any(tx["to"] == chain.minter.address and tx["value"] == 0 for tx in txs)


def _assert_no_key(app: cf.Chainflow, key: str) -> None:
    needle = key.lower().removeprefix("0x")
    with app.engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                for value in row:
                    text = value.hex() if isinstance(value, bytes) else str(value)
                    assert needle not in text.lower(), f"private key found in {table.name}"


def test_lying_rpc_still_one_tx_per_key(anvil: Anvil, tmp_path: Path) -> None:
    from .lying_proxy import LyingProxy

    chain = Chain(anvil)
    with LyingProxy(anvil.rpc_url, slow_seconds=2.0) as proxy:
        adapter = EvmChain("local", proxy.url, LocalSigner.from_key(chain.minter.private_key), timeout=1.0)
        app = cf.Chainflow(f"sqlite:///{tmp_path / 'lies.db'}", chains=[adapter],
                           tracker=cf.TrackerConfig(poll_interval=0.05, rebroadcast_blocks=1))

        @app.workflow("mint")
        async def mint(ctx: cf.Context, amount: int) -> str:
            r = await ctx.submit("mint", chain="local", tx=chain.token.functions.mint(chain.minter.address, amount),
                                 idempotency_key=f"lie-{amount}", finality=cf.Confirmations(2),
                                 retry=cf.Retry(max_attempts=20, initial=0.1, max_delay=0.5))
            return r.tx_hash

        async def main() -> list[cf.RunStatus]:
            stop = asyncio.Event()
            worker = asyncio.create_task(app.worker(concurrency=16, poll_interval=0.02).run(stop))

            async def miner() -> None:  # blocks keep coming, so confirmations accrue
                while not stop.is_set():
                    await asyncio.to_thread(anvil.mine, 1)
                    await asyncio.sleep(0.2)

            mining = asyncio.create_task(miner())
            handles = [await app.astart("mint", a) for a in range(1, 13)]
            done = [await app.await_run(h.id, timeout=120) for h in handles]
            stop.set()
            await worker
            await mining
            return done

        results = asyncio.run(main())
    assert [r.status for r in results] == ["completed"] * 12, [r.error for r in results if r.error]
    assert proxy.lies["dropped"] and proxy.lies["slow"] and proxy.lies["phantom receipt"], proxy.lies
    chain.assert_exactly_once(list(range(1, 13)))
    receipts = {r.output for r in results}
    assert len(receipts) == 12
