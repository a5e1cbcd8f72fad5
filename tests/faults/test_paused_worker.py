"""A worker frozen (SIGSTOP) past its lease starts no step once it resumes (issue 12, item 2).

Two worker processes share one database.  Worker A holds every run of a paced workflow
(short async steps, each logging its side effect; an inline wait between steps) and
is frozen while it waits between two steps, so no step is in flight.  Worker B takes
the runs over once A's lease has expired and finishes them.  Then A is resumed: its
inline waits are long overdue, so the next step is one comparison away; that
comparison must find the lease's deadline passed and ask the database, which says the
runs are no longer A's.  From the append-only side-effect log and the journal: no
step's side effect happened twice, and none happened after another worker had
journaled that step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.storage.schema import journal, runs

APP = Path(__file__).with_name("paused_app.py")
RUNS = 4
STEPS = 8
LEASE = 2.0


@dataclass(frozen=True)
class Effect:
    run_id: str
    step: str
    pid: int
    at: float


def effects(path: Path) -> list[Effect]:
    out = []
    for line in path.read_text().splitlines():
        run_id, step, pid, at = line.split()
        out.append(Effect(run_id, step, int(pid), float(at)))
    return out


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str]) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs()}")
        time.sleep(0.01)


class Workers:
    """Worker subprocesses of ``paused_app.py``, each with its own log."""

    def __init__(self, engine: sa.Engine, url: str, tmp: Path, effects_log: Path) -> None:
        self.engine, self.url, self.tmp, self.effects_log = engine, url, tmp, effects_log
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, label: str) -> subprocess.Popen[bytes]:
        url = self.url
        if url.startswith("postgresql"):  # to find its sessions in pg_stat_activity
            url += ("&" if "?" in url else "?") + f"application_name=cf-{label}"
        env = dict(os.environ, CF_URL=url, CF_EFFECTS=str(self.effects_log), CF_LEASE=str(LEASE),
                   CF_RUNS=str(RUNS))
        with open(self.tmp / f"{label}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, str(APP)], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[label] = proc
        return proc

    def freeze(self, label: str) -> float:
        """SIGSTOP the worker outside any transaction; returns a time by which it was
        stopped (every line it logged is stamped earlier).

        A process frozen inside a transaction keeps its locks (the SQLite write lock, a
        Postgres row lock on the runs its heartbeat renews), and nobody could take its
        runs over until it resumes: not the case under test.  So when the freeze lands
        inside one (a heartbeat, a few ms every lease/3), it is resumed and frozen again
        a moment later, still well inside the wait between two steps."""
        proc = self.procs[label]
        for _ in range(20):
            proc.send_signal(signal.SIGSTOP)
            while _state(proc.pid) != "T":
                time.sleep(0.001)
            stopped = time.time()
            if not self._in_transaction(label):
                return stopped
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.01)
        raise AssertionError(f"worker {label} was inside a transaction at every try")

    def _in_transaction(self, label: str) -> bool:
        if self.engine.dialect.name == "sqlite":
            import sqlite3

            probe = sqlite3.connect(str(self.engine.url.database), timeout=0, isolation_level=None)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError:  # "database is locked": the writer is frozen
                return True
            finally:
                probe.close()
        with self.engine.connect() as conn:
            return bool(conn.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name AND state <> 'idle'"
            ), {"name": f"cf-{label}"}).scalar())

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a stopped process dies only once resumed
                proc.send_signal(signal.SIGKILL)
            proc.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {label}\n{(self.tmp / f'{label}.log').read_text()[-3000:]}" for label in self.procs)


def _state(pid: int) -> str:
    """The process state letter from /proc (T: stopped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


def statuses(engine: sa.Engine) -> dict[str, str]:
    with engine.begin() as conn:
        return {r.id: r.status for r in conn.execute(sa.select(runs.c.id, runs.c.status))}


@dataclass
class Takeover:
    """What one freeze-and-take-over left behind, read from the effect log and tables."""

    ids: list[str]
    log: list[Effect]
    a: int  # worker A's pid (frozen), B's below (took over)
    b: int
    frozen_at: float
    journaled: dict[tuple[str, str], tuple[str, float]]  # (run, key) -> (status, finished_at), of ``kind``
    fences: dict[str, tuple[str, int]]  # run -> (status, fence)
    logs: str


def take_over(db_url: str, tmp_path: Path, workflow: str, kind: str, frozen_after: str, ended: str) -> Takeover:
    """Worker A runs RUNS runs of ``workflow`` (STEPS steps) and is frozen once every
    run has logged ``frozen_after``; B takes them over after A's lease and runs them
    until each is ``ended``; then A is resumed for long enough to act if it would."""
    app = cf.Chainflow(db_url, lease_seconds=LEASE)

    @app.workflow(workflow)  # a stand-in: the subprocesses have the real workflow
    async def stand_in(ctx: cf.Context, steps: int) -> int:  # pragma: no cover
        raise AssertionError("the test process runs no worker")

    ids = [app.start(workflow, STEPS).id for _ in range(RUNS)]
    log_path = tmp_path / "effects.log"
    log_path.touch()
    fleet = Workers(app.engine, db_url, tmp_path, log_path)
    try:
        a = fleet.spawn("A")
        # A claims all runs at once, so they move in step
        wait_for(lambda: sum(e.step == frozen_after for e in effects(log_path)) == RUNS, 30,
                 f"A to reach {frozen_after} in every run", fleet.logs)
        time.sleep(0.1)
        frozen_at = fleet.freeze("A")
        b = fleet.spawn("B")
        wait_for(lambda: set(statuses(app.engine).values()) == {ended}, 40, f"B to end every run {ended}",
                 fleet.logs)
        a.send_signal(signal.SIGCONT)
        time.sleep(LEASE + 1.0)  # A's overdue waits (or work in flight) end at once: its next start is next
        assert a.poll() is None, f"worker A died\n{fleet.logs()}"
    finally:
        fleet.stop()
    try:
        with app.engine.begin() as conn:
            journaled = {(r.run_id, r.key): (r.status, r.finished_at) for r in conn.execute(
                sa.select(journal.c.run_id, journal.c.key, journal.c.status, journal.c.finished_at)
                .where(journal.c.kind == kind))}
            fences = {r.id: (r.status, r.fence) for r in conn.execute(
                sa.select(runs.c.id, runs.c.status, runs.c.fence))}
    finally:
        app.engine.dispose()
    return Takeover(ids, effects(log_path), a.pid, b.pid, frozen_at, journaled, fences, fleet.logs())


@pytest.mark.timeout(120)
def test_worker_resumed_after_losing_its_lease_starts_no_step(db_url: str, tmp_path: Path) -> None:
    # every run past s1, then into the gap: frozen with no step in flight
    t = take_over(db_url, tmp_path, "paced", "step", "s1", "completed")
    log = t.log

    # the scenario happened: A ran the start of every run, B took each over once and finished it
    assert t.fences == {rid: ("completed", 2) for rid in t.ids}
    for rid in t.ids:
        by = {e.pid for e in log if e.run_id == rid}
        assert by == {t.a, t.b}, (rid, by)
    assert len(t.journaled) == RUNS * STEPS

    # nothing A did after it was frozen, in particular nothing already journaled by B
    after_journal = [e for e in log if e.pid == t.a and e.at > t.journaled[(e.run_id, e.step)][1]]
    assert after_journal == [], f"{len(after_journal)} step(s) run after another worker journaled them"
    assert [e for e in log if e.pid == t.a and e.at >= t.frozen_at] == []
    twice = {k: n for k, n in Counter((e.run_id, e.step) for e in log).items() if n > 1}
    assert twice == {}, "side effects repeated"
    assert len(log) == RUNS * STEPS


@pytest.mark.timeout(120)
def test_worker_frozen_mid_compensation_starts_no_compensation_after_it(db_url: str, tmp_path: Path) -> None:
    """The same fault in the middle of compensating: A undoes the newest steps of every
    run and is frozen while one compensation is in flight (a refund awaiting its
    provider).  B takes the runs over after A's lease and finishes compensating them;
    A, resumed, starts no further compensation and journals nothing.  Each
    compensation is journaled once; the one in flight at the freeze is the only one
    that may run twice (at-least-once, docs/leases.md), and only once per run."""
    last = f"u{STEPS - 1}"  # compensations run newest first: u7 starts, then u6, ...
    t = take_over(db_url, tmp_path, "undone", "compensation", f"u{STEPS - 2}", "failed")
    log, undos = t.log, t.journaled

    assert t.fences == {rid: ("failed", 2) for rid in t.ids}, "B took each run over once"
    assert undos == {(rid, f"compensate:s{i}"): ("ok", undos[(rid, f"compensate:s{i}")][1])
                     for rid in t.ids for i in range(STEPS)}, "every compensation journaled once, as done"
    steps = Counter((e.run_id, e.step) for e in log if e.step.startswith("s"))
    assert steps == {(rid, f"s{i}"): 1 for rid in t.ids for i in range(STEPS)}, "A did every step, once"
    assert {e.pid for e in log if e.step == last} == {t.a}
    for rid in t.ids:
        assert {e.pid for e in log if e.run_id == rid and e.step.startswith("u")} == {t.a, t.b}, rid
    assert [e for e in log if e.pid == t.a and e.at >= t.frozen_at] == [], "A started work after its freeze"
    after_journal = [e for e in log if e.pid == t.a and e.step.startswith("u")
                     and e.at > undos[(e.run_id, f"compensate:s{e.step[1:]}")][1]]
    assert after_journal == []
    twice = Counter(e.run_id for e in log if e.step.startswith("u")) - Counter({rid: STEPS for rid in t.ids})
    assert all(n <= 1 for n in twice.values()), f"more than the compensation in flight repeated: {twice}"
    assert "never retrieved" not in t.logs
