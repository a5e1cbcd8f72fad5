"""Benchmark 6, replay sweep: 10,000 recorded runs of 5 steps each replayed against code
with one step overridden (``app.replay_sweep``), on SQLite and Postgres.

Each repetition is a fresh process on a fresh database.  The runs are seeded straight
through the runs store (a run row and its five journal entries each, completed), which
is what a recorded history is; the timed region is the whole sweep as a user runs it:
selecting the runs, reading their histories (in batches of 1,000, read-only), executing
the workflow code against each and building the per-step report.  The overridden step
is marked pure, so it runs for every run and its output is diffed.  Afterwards every
report is checked: exactly one changed step (the overridden one) per run, and the
database unchanged in row count.  Target: ≥ 1,000 runs/s.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

from .harness import Figure, Options, environment, environment_markdown, failed, log, run_on_database

TITLE = "replay sweep: recorded 5-step runs replayed with one step overridden (runs/s, higher is better)"
RUNS = 10_000
QUICK_RUNS = 300
STEPS = 5


def available() -> str | None:
    return None


def step(i: int, amount: int) -> dict[str, int]:
    return {"step": i, "amount": amount}


def step_with_fee(i: int, amount: int) -> dict[str, int]:
    return {"step": i, "amount": amount - amount // 100}


async def flow(ctx: Any, amount: int) -> int:
    total = 0
    for i in range(STEPS):
        out = await ctx.step(f"s{i}", step, i, amount)
        total += out["amount"]
    return total


def _seed(app: Any, n: int) -> None:
    """``n`` completed runs of ``flow`` with their journals, as the engine records them."""
    from chainflow.states import EntryState, RunState
    from chainflow.storage import codec, store
    from chainflow.storage.schema import journal, runs

    now = time.time()
    run_rows, entries = [], []
    for r in range(n):
        amount = 10**24 + r
        text = codec.dumps(amount)
        row = store.run_row(workflow="pay5", input_text=text, idempotency_key=None, deadline=None, now=now + r * 1e-6,
                            input_hash=hashlib.sha256(f"pay5\0{text}".encode()).hexdigest())
        row.update(status=RunState.COMPLETED, output=codec.dumps(STEPS * amount), ready_at=None)
        run_rows.append(row)
        for i in range(STEPS):
            entries.append(dict(run_id=row["id"], branch="", position=i, key=f"s{i}", kind="step",
                                status=EntryState.OK, output=codec.dumps(step(i, amount)), error=None, attempts=1,
                                started_at=now, finished_at=now))
    with app.engine.begin() as conn:
        for i in range(0, n, 2_000):
            conn.execute(runs.insert(), run_rows[i:i + 2_000])
        for i in range(0, len(entries), 10_000):
            conn.execute(journal.insert(), entries[i:i + 10_000])


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import sqlalchemy as sa

    import chainflow as cf
    from chainflow.replay.replayer import Override
    from chainflow.replay.report import Change
    from chainflow.storage.schema import journal, runs

    url = spec["target"] if spec["backend"] == "postgres" else f"sqlite:///{os.path.join(spec['target'], 'r.db')}"
    app = cf.Chainflow(url)
    app.workflow("pay5")(flow)
    app.ensure_schema()
    n = spec["runs"]
    _seed(app, n)

    def rows() -> tuple[int, int]:
        with app.engine.connect() as conn:
            return (conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar_one(),
                    conn.execute(sa.select(sa.func.count()).select_from(journal)).scalar_one())

    before = rows()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    report = asyncio.run(app.areplay_sweep(workflow_name="pay5",
                                           overrides={"s2": Override(step_with_fee, pure=True)}))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    assert not report.failures, list(report.failures.items())[:3]
    assert len(report.reports) == n, len(report.reports)
    for r in report.reports:
        changed = [(s.label, s.change) for s in r.steps if s.change != Change.UNCHANGED]
        assert changed == [("s2", Change.OUTPUT_CHANGED)], (r.run_id, changed)
    assert rows() == before, "a replay wrote to the database"
    app.engine.dispose()
    return {"runs": n, "wall_s": wall, "cpu_s": cpu, "runs_per_s": n / wall}


def run(opts: Options, command: str) -> str:
    env = environment(opts)
    n = QUICK_RUNS if opts.quick else RUNS
    figs = {b: Figure() for b in opts.backends}
    for rep in range(1, opts.reps + 1):
        for backend in opts.backends:
            result = run_on_database("replay", {"backend": backend, "runs": n}, backend, opts)
            if failed(result, [figs[backend]], f"rep {rep} {backend}"):
                continue
            figs[backend].values.append(result["runs_per_s"])
            figs[backend].raw.append(result)
            log(f"  rep {rep} {backend}: {result['runs_per_s']:,.0f} runs/s ({result['wall_s']:.2f} s wall, "
                f"{result['cpu_s']:.2f} s CPU)")
    out = [f"## replay: {TITLE}", "", environment_markdown(env, command),
           f"- **Repetitions:** {opts.reps}, each a fresh process and database; {n:,} runs × {STEPS} steps seeded "
           "through the runs store, one step overridden (pure, so it runs and is diffed for every run)", "",
           "| backend | runs/s | CPU s per sweep | wall s per sweep |", "|---|---|---|---|"]
    for backend, fig in figs.items():
        cpu = Figure([r["cpu_s"] for r in fig.raw]) if fig.raw else Figure(problem=fig.problem)
        wall = Figure([r["wall_s"] for r in fig.raw]) if fig.raw else Figure(problem=fig.problem)
        out.append(f"| {backend} | {fig.cell()} | {cpu.cell('{:.2f}')} | {wall.cell('{:.2f}')} |")
    out += ["", "The timed region is the whole `app.replay_sweep(...)`: selecting the runs, reading their "
            "histories (read-only, 1,000 per transaction), executing the workflow against each and building "
            "the report; each report is then checked (one changed step per run, no row written).  "
            "Target: ≥ 1,000 runs/s.", ""]
    return "\n".join(out)
