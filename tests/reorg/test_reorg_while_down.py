"""A reorg that happens while no worker is alive is detected on restart.

A worker subprocess (with its tracker) completes a run; it is SIGKILLed; a deep reorg
replaces the chain from below the mint's block; a fresh worker subprocess starts.  Its
tracker compares the stored header window with the node (a changed hash at a stored
height, or new blocks whose parent hashes do not chain onto the stored tip), records
the reorg, and the run is rolled back and completed again: dependents compensated once,
the mint re-included with the same nonce and signed bytes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from web3 import Web3

from chainflow.storage.schema import headers, submissions, tx_attempts
from devnet import deploy_token, reorg

from .worker_proc import build

SCRIPT = Path(__file__).with_name("worker_proc.py")


class Workers:
    """Worker subprocesses this test started (and only those are ever killed)."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp = env, tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        n = len(self.procs) + 1
        env = dict(os.environ, **self.env, CF_WORKER=f"reorg-worker-{n}")
        with open(self.tmp / f"worker{n}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, str(SCRIPT)], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.tmp.glob("worker*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def wait_for(predicate: Any, timeout: float, what: str, workers: Workers, tick: Any = None) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{workers.logs()}")
        if tick is not None:
            tick()
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("shape", ["same_height", "longer_branch"])
def test_reorg_while_worker_is_down_is_detected_on_restart(net: Any, db_url: str, tmp_path: Path,
                                                          shape: str) -> None:
    w3 = Web3(Web3.HTTPProvider(net.rpc_url, request_kwargs={"timeout": 10}))
    minter = net.accounts()[0]
    token = deploy_token(w3, minter.private_key, max_mint=10**12)
    net.mine(4)
    ledger = tmp_path / "ledger.log"
    ledger.touch()
    app = build(db_url, net.rpc_url, token, minter.private_key, str(ledger))
    app.ensure_schema()
    workers = Workers({"CF_URL": db_url, "CF_RPC": net.rpc_url, "CF_TOKEN": token, "CF_KEY": minter.private_key,
                       "CF_LEDGER": str(ledger)}, tmp_path)

    def effects() -> list[str]:
        return [line.split()[0] for line in ledger.read_text().splitlines()]

    def stored_tip() -> int:
        with app.engine.begin() as conn:
            return int(conn.execute(sa.select(sa.func.max(headers.c.number))
                                    .where(headers.c.orphaned.is_(sa.false()))).scalar() or -1)

    def sub() -> Any:
        with app.engine.begin() as conn:
            return conn.execute(sa.select(submissions)).one()

    try:
        first_worker = workers.spawn()
        h = app.start("mint_flow", {"id": "order-1"})
        wait_for(lambda: app.status(h.id).status == "completed", 60, "the first completion", workers,
                 tick=lambda: net.mine(1))
        head = net.block_number()
        wait_for(lambda: stored_tip() >= head, 30, "the tracker to store the head", workers)
        first_worker.send_signal(signal.SIGKILL)
        first_worker.wait(timeout=10)
        assert first_worker.returncode == -signal.SIGKILL
        assert effects() == ["reserve", "credit", "notify"]

        before = sub()
        with app.engine.begin() as conn:
            (attempt,) = conn.execute(sa.select(tx_attempts)).all()
        block, old_block_hash = int(before.block_number), before.block_hash
        tip = stored_tip()
        depth = net.block_number() - block + 2
        result = reorg(net, depth, extra_blocks=0 if shape == "same_height" else 3)
        assert old_block_hash in result.old_hashes
        if shape == "same_height":
            assert net.block_number() == tip, "the new branch ends at the stored tip's height"

        workers.spawn()
        # no mining until the new worker noticed: what it compares is exactly the above
        wait_for(lambda: bool(app.reorgs()), 60, "the restarted tracker to detect the reorg", workers)
        wait_for(lambda: app.status(h.id).status == "completed" and len(effects()) >= 7, 60,
                 "the re-completion", workers, tick=lambda: net.mine(1))
    finally:
        workers.stop_all()
        app.engine.dispose()

    (event,) = app.reorgs()
    assert event.fork_number == result.fork_height
    assert event.depth == tip - result.fork_height
    assert event.old_hashes == result.old_hashes[: event.depth]
    assert event.affected_txs == [attempt.tx_hash]

    assert effects() == ["reserve", "credit", "notify", "unnotify", "debit", "credit", "notify"]
    st = app.status(h.id)
    assert st.status == "completed"
    after = sub()
    assert (after.state, after.nonce, after.tx_hash) == ("final", before.nonce, attempt.tx_hash)
    assert after.block_hash != old_block_hash
    with app.engine.begin() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tx_attempts)).scalar_one() == 1
    assert st.output["tx"] == attempt.tx_hash and st.output["nonce"] == before.nonce
    journal = app.journal(h.id)
    gone = [e for e in journal if e.invalidated]
    assert sorted(e.key for e in gone) == sorted(["mint", "credit", "notify", "compensate:notify",
                                                  "compensate:credit"])
    assert all(e.reason and e.reason.startswith(f"reorg #{event.id} on local") for e in gone)
    assert [e.key for e in journal if not e.invalidated] == ["reserve", "mint", "credit", "notify"]
