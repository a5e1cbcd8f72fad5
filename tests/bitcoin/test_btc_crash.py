"""Exactly-once Bitcoin payouts under SIGKILL, on a real regtest node, SQLite and Postgres.

A payout worker process (``payout_worker.py``) is killed at every phase of the
submission protocol, batched and not, several times each, and at random moments from
outside, while a background thread mines a block every 0.3-0.5 s; a clean worker then
finishes everything.  Each payout goes to an address of its own with an amount of its
own, so the chain alone tells whether a key was paid twice or never.  What is asserted
is read from the chain (every block since the start) and from the tables (every
candidate ever signed, decoded), never from what the engine says about itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from bitcoin.core import CTransaction, b2lx

from adapters.bitcoin import DescriptorWallet, network
from chainflow.storage import schema
from devnet import RpcError
from tests.adapters._btc import master_key
from tests.submission.test_submission import _assert_no_key, _statuses, _stop, _wait_done

from .payout_worker import BUMP_BLOCKS, build

ROOT = Path(__file__).resolve().parents[2]
WALLET_ADDRESSES = 20  # the worker's lookahead: every funding output pays one of them
FUNDING_ROUNDS = 6  # x WALLET_ADDRESSES coins, so unbatched payouts run side by side
COIN = Decimal("0.05")  # each funding output; a payout is ~20,000-40,000 sats
PER_PHASE = 12  # payouts started before each phase's kills
KILLS_PER_PHASE = 2
RANDOM_KILLS = 6
# (batching on?, phase): a batched worker takes unbatched leftovers too, never the reverse
SCHEDULE = [(False, "allocated"), (False, "signed"), (False, "broadcast"), (False, "final"),
            (True, "batch-recorded"), (True, "batch-signed"), (True, "batch-broadcast"), (True, "final")]


class Miner:
    """A block every 0.3-0.5 s, as a real chain keeps producing blocks whether or not
    anyone is alive to watch them, each with whatever the mempool holds.

    While ``congested`` is set, a transaction is mined only once its coins have been
    spent by a second version in the mempool (the tracker bumped its fee after
    BUMP_BLOCKS) or have waited ``PATIENCE`` blocks (no tracker was alive to bump it),
    so intents in flight end up with several candidates, whichever of them is mined."""

    PATIENCE = 4 * BUMP_BLOCKS

    def __init__(self, node: Any, rng: random.Random) -> None:
        self.node, self.rng = node, rng
        self.halt = threading.Event()
        self.congested = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None
        self._inputs: dict[str, list[str]] = {}  # txid -> outpoints it spends
        self._first_seen: dict[str, int] = {}  # outpoint -> tip when a spend of it was first seen
        self._versions: dict[str, set[str]] = defaultdict(set)  # outpoint -> txids seen spending it

    def _run(self) -> None:
        try:
            while not self.halt.wait(self.rng.uniform(0.3, 0.5)):
                if self.congested.is_set():
                    self._mine_congested()
                else:
                    self.node.mine(1)
        except BaseException as exc:  # a silent dead miner would read as a stuck engine
            self.error = exc
            raise

    def _mine_congested(self) -> None:
        tip, ready = self.node.height(), []
        for txid in self.node.mempool():
            if txid not in self._inputs:
                try:
                    vin = self.node.rpc("getrawtransaction", txid, True)["vin"]
                except RpcError:  # replaced since the mempool was listed
                    continue
                self._inputs[txid] = [f"{i['txid']}:{i['vout']}" for i in vin]
            spent = self._inputs[txid]
            for outpoint in spent:
                self._versions[outpoint].add(txid)
            waited = tip - min(self._first_seen.setdefault(op, tip) for op in spent)
            if waited >= self.PATIENCE or any(len(self._versions[op]) > 1 for op in spent):
                ready.append(txid)
        try:  # an OP_RETURN coinbase: nobody's coin
            self.node.rpc("generateblock", "raw(6a)", ready)
        except RpcError:  # one of them was replaced meanwhile: the next block takes its successor
            self.node.rpc("generateblock", "raw(6a)", [])

    def __enter__(self) -> Miner:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt.set()
        self.thread.join(10)
        if self.error is not None:
            raise AssertionError(f"the miner thread died: {self.error!r}") from self.error


class Workers:
    """Worker processes of one test, each with its output kept (it must never show a key)."""

    def __init__(self, url: str, node: Any, tprv: str, logs: Path) -> None:
        self.env = dict(os.environ, CF_URL=url, CF_RPC=node.rpc_url, CF_NETWORK=node.network, CF_XPRV=tprv,
                        CF_CONCURRENCY="16", PYTHONPATH=str(ROOT))
        self.env.pop("CF_CRASH_AT", None)
        self.logs = logs
        self.started = 0

    def start(self, *, batching: bool, crash: str | None = None) -> subprocess.Popen[bytes]:
        self.started += 1
        env = dict(self.env, CF_BATCH="1" if batching else "0", CF_WORKER=f"w{self.started}")
        if crash:
            env["CF_CRASH_AT"] = crash
        with open(self.logs / f"worker-{self.started}.log", "wb") as out:
            return subprocess.Popen([sys.executable, str(ROOT / "tests/bitcoin/payout_worker.py")], env=env,
                                    stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("worker-*.log")))


def _outpoints(raw: bytes) -> frozenset[str]:
    return frozenset(f"{b2lx(i.prevout.hash)}:{i.prevout.n}" for i in CTransaction.deserialize(raw).vin)


def _sats(coins: Decimal) -> int:
    sats = coins.scaleb(8)
    assert sats == sats.to_integral_value(), coins
    return int(sats)


def _secrets(seed: bytes, tprv: str, keyring: Any) -> list[str]:
    """Every form of the wallet's key material a leak could take: the tprv, the master
    secret and chain code, and each derived key's secret (all as hex)."""
    digest = hmac.new(b"Bitcoin seed", seed, hashlib.sha512).digest()
    return [tprv, digest[:32].hex(), digest[32:].hex(), *(k.secret.hex() for k in keyring._keys)]


@pytest.mark.slow
def test_crash_at_every_phase_pays_each_key_exactly_once(regtest_node: Any, db_url: str, tmp_path: Path) -> None:
    node = regtest_node
    rng = random.Random(int(os.environ.get("CF_CRASH_SEED", "14")))
    seed = rng.randbytes(32)
    tprv = master_key(seed, node.network)
    net = network(node.network)
    keyring = DescriptorWallet(tprv).keyring(net, "btc", WALLET_ADDRESSES)
    payees = DescriptorWallet(master_key(b"crash-test payees", node.network)).keyring(net, "payees", 200)
    for _ in range(FUNDING_ROUNDS):
        node.rpc("sendmany", "", {address: COIN for address in keyring.addresses})
    node.mine(1)
    start_height = node.height()
    client = build(db_url, node.rpc_url, node.network, DescriptorWallet(tprv), batching=False)
    workers = Workers(db_url, node, tprv, tmp_path)
    payouts: dict[str, tuple[str, int]] = {}  # run id -> (payee address, sats)
    kills: Counter[str] = Counter()
    began = time.monotonic()

    def start(count: int) -> list[str]:
        ids = []
        for _ in range(count):
            n = len(payouts)
            address, sats = payees.addresses[n], 20_000 + 137 * n
            run = client.start("payout", {"key": f"payout:{n}", "to": address, "sats": sats, "confs": 1 + n % 2},
                               idempotency_key=f"run-{n}")
            payouts[run.id] = (address, sats)
            ids.append(run.id)
        return ids

    with Miner(node, random.Random(rng.random())) as miner:
        for batching, phase in SCHEDULE:
            if batching:  # from here on, payouts in flight get fee-bumped too
                miner.congested.set()
            ids = start(PER_PHASE)
            for _ in range(KILLS_PER_PHASE):
                occurrence = rng.randint(1, 2 if phase.startswith("batch-") else 4)
                proc = workers.start(batching=batching, crash=f"{phase}:{occurrence}")
                if _wait_done(client, ids, 60, proc):
                    _stop(proc)  # nothing left to reach this phase with
                    break
                reached = proc.poll() is not None
                if not reached:  # not within the minute: kill it from outside instead
                    proc.send_signal(signal.SIGKILL)
                assert proc.wait(30) == -signal.SIGKILL, f"worker died otherwise: {workers.output()[-3000:]}"
                kills[phase if reached else "outside"] += 1
        ids = start(24)
        for n in range(RANDOM_KILLS):  # and at random moments, from outside
            proc = workers.start(batching=n % 2 == 0)
            time.sleep(rng.uniform(1.0, 4.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills["random"] += 1
        proc = workers.start(batching=True)
        try:
            ids = list(payouts)
            done = _wait_done(client, ids, 150)
            unfinished = {s for s in _statuses(client, ids).values() if s != "completed"}
            assert done, f"unfinished runs: {unfinished}; worker output: {workers.output()[-3000:]}"
        finally:
            _stop(proc)
    elapsed = time.monotonic() - began
    print(f"\n{len(payouts)} payouts, {sum(kills.values())} SIGKILLs {dict(kills)}, {elapsed:.1f} s", file=sys.stderr)

    statuses = _statuses(client, list(payouts))
    # first: a run that failed early (never reaching a phase) says why
    errors = {client.status(r).error["message"] for r, s in statuses.items() if s != "completed"}  # type: ignore[index]
    assert set(statuses.values()) == {"completed"}, (Counter(statuses.values()), sorted(errors)[:5])
    assert len(payouts) >= 100 and sum(kills.values()) >= 20
    assert all(kills[phase] >= 1 for _, phase in SCHEDULE), \
        f"a phase was never reached: {kills}; worker output: {workers.output()[-3000:]}"

    # --- the chain: each payee paid exactly once, the exact amount, in a confirmed block ---
    scripts = {script.hex(): address for script, address in zip(payees.scripts, payees.addresses, strict=True)}
    paid: dict[str, list[tuple[str, int, int]]] = defaultdict(list)
    mined: dict[str, list[str]] = {}  # txid -> the outpoints it spends, every tx since the start
    for height in range(start_height + 1, node.height() + 1):
        for tx in node.rpc("getblock", node.rpc("getblockhash", height), 2)["tx"]:
            mined[tx["txid"]] = [f"{i['txid']}:{i['vout']}" for i in tx["vin"] if "txid" in i]
            for out in tx["vout"]:
                address = scripts.get(out["scriptPubKey"]["hex"])
                if address is not None:
                    paid[address].append((tx["txid"], int(out["n"]), _sats(out["value"])))
    wanted = dict(payouts.values())
    assert set(paid) == set(wanted), "a payee was never paid, or an address nobody asked for was"
    twice = {a: outs for a, outs in paid.items() if len(outs) != 1}
    assert not twice, f"paid more than once: {twice}"
    assert {a: outs[0][2] for a, outs in paid.items()} == wanted, "an amount differs from the one asked for"
    outputs = {run: client.status(run).output for run in payouts}
    assert all((outputs[r]["tx"], outputs[r]["vout"]) == paid[a][0][:2] for r, (a, _) in payouts.items()), \
        "a run's receipt names another output than the one paying it"

    # --- the tables: candidates, reservations, journal --------------------------------
    with client.engine.connect() as conn:
        subs = {r.id: r for r in conn.execute(sa.select(schema.submissions))}
        attempts = list(conn.execute(sa.select(schema.tx_attempts)))
        reservations = list(conn.execute(sa.select(schema.reservations)))
        journal = conn.execute(
            sa.select(schema.journal.c.run_id, sa.func.count())
            .where(schema.journal.c.kind == "submit", schema.journal.c.superseded == 0)
            .group_by(schema.journal.c.run_id)).all()
    spends: dict[int, set[frozenset[str]]] = defaultdict(set)
    hashes: dict[int, set[str]] = defaultdict(set)
    for attempt in attempts:
        spends[attempt.submission_id].add(_outpoints(attempt.raw))
        hashes[attempt.submission_id].add(attempt.tx_hash)
    assert all(len(sets) == 1 for sets in spends.values()), "an intent's candidates spend different inputs"
    assert any(len(h) > 1 for h in hashes.values()), "no fee bump happened: the check above proved nothing"
    owners: dict[str, list[int]] = defaultdict(list)
    for sub_id, (inputs,) in spends.items():
        for outpoint in inputs:
            owners[outpoint].append(sub_id)
    shared = {op: ids for op, ids in owners.items() if len(ids) > 1}
    assert not shared, f"outpoints spent by candidates of two intents: {shared}"
    confirmed: dict[int, set[str]] = defaultdict(set)  # intent -> its txs on chain
    for txid, spent in mined.items():
        for outpoint in spent:
            if outpoint in owners:
                (owner,) = owners[outpoint]
                assert txid in hashes[owner], f"{txid} on chain spends {outpoint} of intent {owner}, not a candidate"
                confirmed[owner].add(txid)
    assert set(confirmed) == set(spends) and all(len(t) == 1 for t in confirmed.values()), \
        "an intent has no transaction on chain, or more than one"
    batches = {s.id for s in subs.values() if s.batch_id == s.id}
    payout_subs = [s for s in subs.values() if s.id not in batches]
    assert len(payout_subs) == len(payouts) and all(s.state == "final" for s in subs.values())
    for sub in payout_subs:  # settled by one of its own candidates (or its batch's)
        owner = sub.batch_id if sub.batch_id is not None else sub.id
        assert sub.tx_hash in hashes[owner], f"submission {sub.id} settled by a tx that is not its candidate"
    batched = sum(1 for s in payout_subs if s.batch_id is not None)
    assert batched >= 40 and len(batches) >= 4, f"only {batched} payouts in {len(batches)} batches"
    for row in reservations:
        assert row.outpoint in set().union(*spends[row.submission_id]), \
            f"reserved {row.outpoint} is not what submission {row.submission_id}'s candidates spend"
    held = [r for r in reservations if r.spent_at_block is None and subs[r.submission_id].state in ("final", "failed")]
    assert not held, f"coins still held by finished intents: {held}"
    entries: dict[str, int] = {run: count for run, count in journal}
    assert set(entries) == set(payouts) and set(entries.values()) == {1}, "not one live submit entry per run"

    # --- the key material: never in a table, never in a worker's output ------------------
    output = workers.output().lower()
    assert "paying from descriptorwallet(" in output, "the workers' log was not captured: nothing below is proven"
    for secret in _secrets(seed, tprv, keyring):
        _assert_no_key(client, secret)
        assert secret.lower() not in output, "key material in a worker's output"
    assert urllib.parse.urlsplit(node.rpc_url).password not in output, "the node's RPC password was logged"
    client.engine.dispose()
