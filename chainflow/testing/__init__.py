"""Run workflows to completion in-process, for users' own tests; replay exported
production histories against the current code (``replay_history``,
``assert_unchanged``, ``histories``); and an in-memory UTXO chain
(``FakeUtxoChain``, ``FakeUtxoAdapter``, ``pay``) to submit to.

Time is a ``FakeClock`` that the harness moves straight to the next wake-up whenever
nothing is runnable, so a 30-day trial period takes milliseconds and no global time
patching is involved.  Every step's output, error and attempts come back for asserts.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ..chain.submission import Submitter
from ..client.app import Chainflow, RunStatus
from ..client.timetravel import StepCode, WorkflowCode
from ..clock import FakeClock
from ..replay.history import History
from ..replay.report import Change, RunReport
from ..states import TERMINAL, EntryState, RunState
from ..storage.schema import runs
from .utxo import FakeTx, FakeUtxoAdapter, FakeUtxoChain, pay

__all__ = ["CallLog", "FakeTx", "FakeUtxoAdapter", "FakeUtxoChain", "StepResult", "TestRun", "WorkflowTester",
           "assert_unchanged", "histories", "pay", "replay_history", "run_workflow"]


@dataclass(frozen=True)
class StepResult:
    key: str
    branch: str
    kind: str
    status: EntryState
    output: Any
    error: dict[str, Any] | None
    attempts: int
    attempt_errors: list[dict[str, Any] | None] = field(default_factory=list)


@dataclass(frozen=True)
class TestRun:
    run: RunStatus
    steps: dict[str, StepResult]  # "branch/key" (or "key" on the main branch) -> result

    @property
    def status(self) -> RunState:
        return self.run.status

    @property
    def output(self) -> Any:
        return self.run.output

    @property
    def error(self) -> dict[str, Any] | None:
        return self.run.error


class WorkflowTester:
    """Drives an app's runs with a fake clock: start, signal, advance, inspect."""

    __test__ = False  # not a pytest class

    def __init__(self, app: Chainflow, clock: FakeClock | None = None) -> None:
        if clock is None:
            if not isinstance(app.clock, FakeClock):
                raise TypeError("WorkflowTester needs an app built with clock=FakeClock() (or pass the clock)")
            clock = app.clock
        self.app = app
        self.clock = clock

    async def run_until_idle(self, *, advance: bool = True, max_wakeups: int = 10_000) -> None:
        """Execute everything due; if ``advance``, jump the clock to each next wake-up
        until no run has a timed wake-up left (done, or waiting for a signal)."""
        worker = self.app.worker(concurrency=64, inline_wait=0.0, poll_interval=0.01)
        await worker.start()
        try:
            for _ in range(max_wakeups):
                await worker.drain()
                nxt = await asyncio.to_thread(self._next_wake)
                if nxt is None or not advance:
                    return
                self.clock.set(nxt)
            raise RuntimeError(f"runs still active after {max_wakeups} wake-ups")
        finally:
            await worker.close()

    def _next_wake(self) -> float | None:
        with self.app.engine.begin() as conn:
            return conn.execute(
                sa.select(sa.func.min(runs.c.ready_at)).where(runs.c.status.not_in(TERMINAL))
            ).scalar()

    def result(self, run_id: str) -> TestRun:
        by_attempt: dict[tuple[str, str], list[dict[str, Any] | None]] = {}
        for a in self.app.attempts(run_id):
            by_attempt.setdefault((a.branch, a.key), []).append(a.error)
        steps = {}
        for e in self.app.journal(run_id):
            if e.invalidated:
                continue
            label = f"{e.branch}/{e.key}" if e.branch else e.key
            steps[label] = StepResult(e.key, e.branch, e.kind, e.status, e.output, e.error, e.attempts,
                                      by_attempt.get((e.branch, e.key), []))
        return TestRun(self.app.status(run_id), steps)

    async def run(self, workflow: str, input: Any = None, **start: Any) -> TestRun:
        handle = await self.app.astart(workflow, input, **start)
        await self.run_until_idle()
        return self.result(handle.id)


def run_workflow(
    register: Callable[[Chainflow], Any] | Chainflow,
    workflow: str,
    input: Any = None,
    *,
    clock: FakeClock | None = None,
    database_url: str | None = None,
) -> TestRun:
    """One call: throwaway SQLite, fake clock, run to completion, return every step.

    ``register`` is either an app (its registered workflows are reused on a fresh
    database) or a function that registers workflows on the app it is given.
    """
    clock = clock or FakeClock()
    tmp = tempfile.TemporaryDirectory(prefix="chainflow-test-")
    url = database_url or f"sqlite:///{Path(tmp.name) / 'test.db'}"
    app = Chainflow(url, clock=clock)
    if isinstance(register, Chainflow):
        app.registry = register.registry
        app.chains = register.chains
        if register.chains:  # the same chains, over this test's database and fake clock
            app.submitter = Submitter(app.database, app.chains, app.clock, app.tracker_config)
    else:
        register(app)
    try:
        return asyncio.run(WorkflowTester(app, clock).run(workflow, input))
    finally:
        app.engine.dispose()
        tmp.cleanup()


def histories(directory: str | Path) -> list[Path]:
    """The exported histories (``*.json``) in ``directory``, sorted: for
    ``@pytest.mark.parametrize("history", histories("tests/histories"))``."""
    found = sorted(Path(directory).glob("*.json"))
    if not found:
        raise FileNotFoundError(f"no exported histories (*.json) in {directory}: "
                                "add some with `chainflow export RUN > {directory}/RUN.json`")
    return found


def replay_history(app: Chainflow, path: str | Path, *, overrides: dict[str, StepCode] | None = None,
                   workflow: WorkflowCode = None, pure: tuple[str, ...] = (),
                   allow_effects: bool = False) -> RunReport:
    """Replay a history ``chainflow export`` wrote against ``app``'s current code (and
    ``overrides``): no database is read or written, nothing is sent to a chain.  Keep
    real production histories in the repository and this turns them into regression
    tests; ``assert_unchanged`` fails the test on any change."""
    history = History.from_json(Path(path).read_text(), source=str(path))
    return app.replay(history, overrides=overrides, workflow=workflow, pure=pure, allow_effects=allow_effects)


def assert_unchanged(report: RunReport) -> None:
    """Fail (``AssertionError``) listing every change a replay found."""
    if not report.changed:
        return
    lines = [f"replay of run {report.run_id} ({report.workflow}) changed: recorded {report.recorded_status}, "
             f"replayed {report.replayed_status}"]
    lines += [f"  {s.label}: {s.change.value} {s.detail}".rstrip() for s in report.steps if s.change != Change.UNCHANGED]
    lines += [f"  run output {d.path or '$'}: {d.recorded!r} -> {d.replayed!r}" for d in report.output_diff]
    if report.error_changed:
        lines.append(f"  run error: {report.error_changed}")
    raise AssertionError("\n".join(lines))


class CallLog:
    """Append-only file of "name" lines: counts step executions (side effects) across
    threads and processes.  Crash tests run workers as subprocesses and SIGKILL them,
    so in-memory counters would not do; one O_APPEND write per line keeps lines whole
    when several processes write at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.touch()
        self._lock = threading.Lock()

    def hit(self, name: str) -> None:
        line = (name.replace("\n", " ") + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines()

    def counts(self) -> Counter[str]:
        return Counter(self.lines())

    def count(self, name: str) -> int:
        return self.counts()[name]
