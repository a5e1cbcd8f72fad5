"""Race test (Postgres): two worker processes over 500 runs never run one run at once.

Every run suspends between its steps (``inline_wait=0``), so each run is claimed three
times and hops between the workers; each step logs (run, worker, step, start, end).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf

APP = Path(__file__).with_name("crash_app.py")
RUNS = 500


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(180)
def test_two_workers_never_execute_the_same_run_at_once(pg_url: str, tmp_path: Path) -> None:
    app = cf.Chainflow(pg_url)

    @app.workflow("race")
    async def race(ctx: cf.Context, n: int) -> None:  # pragma: no cover - stand-in, workers run the real one
        raise AssertionError("the test process runs no worker")

    app.ensure_schema()
    with app.engine.begin() as conn:
        conn.execute(sa.text(
            "CREATE TABLE race_log (id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, worker TEXT NOT NULL, "
            "step TEXT NOT NULL, started DOUBLE PRECISION NOT NULL, ended DOUBLE PRECISION NOT NULL)"
        ))
    ids = [app.start("race", i).id for i in range(RUNS)]

    procs: list[subprocess.Popen[bytes]] = []
    t0 = time.monotonic()
    try:
        for label in ("A", "B"):
            env = dict(os.environ, CF_URL=pg_url, CF_MODE="race", CF_WORKER=label, CF_LEASE="10")
            env.pop("CF_CRASH_AT", None)
            with open(tmp_path / f"{label}.log", "wb") as log:
                procs.append(subprocess.Popen([sys.executable, str(APP)], env=env, stdout=log,
                                              stderr=subprocess.STDOUT))
        while True:
            counts = dict(Counter(r.status for r in app.runs(limit=RUNS + 10)))
            if counts.get(cf.RunState.COMPLETED, 0) == RUNS:
                break
            for p in procs:
                assert p.poll() is None, f"worker died: {(tmp_path / 'A.log').read_text()[-2000:]}"
            assert time.monotonic() - t0 < 120, f"not all runs completed: {counts}"
            time.sleep(0.2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)  # graceful: run_worker stops on SIGTERM
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    elapsed = time.monotonic() - t0

    with app.engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT run_id, worker, step, started, ended FROM race_log")).all()
        claims = Counter(conn.execute(sa.text("SELECT attempt_count FROM cf_runs")).scalars())
    per_run: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        per_run[r.run_id].append(r)

    # none lost, none doubled: with no crash, every step ran exactly once
    assert set(per_run) == set(ids)
    assert all(sorted(r.step for r in v) == ["one", "three", "two"] for v in per_run.values())
    assert all(app.status(i).output == n for n, i in enumerate(ids[:20]))

    # never two workers inside one run at the same time
    overlaps = []
    for run_id, entries in per_run.items():
        for i, a in enumerate(entries):
            for b in entries[i + 1:]:
                if a.worker != b.worker and a.started < b.ended and b.started < a.ended:
                    overlaps.append((run_id, a, b))
    assert overlaps == []

    workers = Counter(r.worker for r in rows)
    hopped = sum(1 for v in per_run.values() if len({r.worker for r in v}) > 1)
    print(f"\n{RUNS} runs in {elapsed:.1f}s; steps per worker {dict(workers)}; runs that changed worker: {hopped}; "
          f"claims per run {dict(claims)}")
    assert set(workers) == {"A", "B"}  # both really competed
    assert hopped > 0
    app.engine.dispose()
