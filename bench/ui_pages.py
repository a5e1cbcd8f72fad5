"""Benchmark 7, dashboard pages: server time of the runs page and of a run's page over
1,000,000 recorded runs, on SQLite and Postgres (``chainflow ui``, issue #17).

Each repetition is a fresh process on a fresh database, seeded with bulk inserts
straight through the schema: 1,000,000 runs over 30 days (8 workflows, every status,
one in 2,000 dead-lettered), and for one run in 10 a journal of five entries (a
failed attempt on one in 50).  The tables are ANALYZEd, as a live database's
autovacuum or ``PRAGMA optimize`` would have.  Then every page is requested through
the dashboard's ASGI app in-process (no network, no browser): the server time is the
whole request (query-string checks, the reads, the template).  Target: < 100 ms.

Pages: the runs page (newest 50; by status; by workflow; a rare status; a time range;
the 200th page of completed runs, by cursor) and a run's page (status, journal, attempts, forks,
submissions) for runs picked at random among those with a journal.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import statistics
import time
from typing import Any

from .harness import Figure, Options, environment, environment_markdown, failed, log, run_on_database

TITLE = "dashboard pages: server time of the runs page and a run page over 1,000,000 runs (ms, lower is better)"
RUNS = 1_000_000
QUICK_RUNS = 5_000
WORKFLOWS = [f"payout_{i}" for i in range(8)]
REQUESTS = 30  # per page kind and repetition
DEEP = 200  # the page reached by cursor (50 runs a page: 10,000 runs deep)
PAGES = ["runs: newest", "runs: status=completed", "runs: workflow", "runs: dead_lettered",
         "runs: 1-day range", "runs: deep page (cursor)", "run page"]


def available() -> str | None:
    try:
        import httpx  # noqa: F401
        import starlette  # noqa: F401
    except ModuleNotFoundError as exc:
        return f"the ui extra is not installed ({exc.name})"
    return None


def _status(i: int) -> str:
    if i % 2_000 == 7:
        return "dead_lettered"
    return ("completed", "completed", "completed", "completed", "failed", "cancelled", "waiting", "sleeping")[i % 8]


def _seed(app: Any, n: int, start: float) -> list[str]:
    """``n`` runs spread over 30 days before ``start``; returns the ids with a journal."""
    from chainflow.storage import codec
    from chainflow.storage.schema import attempts, journal, runs

    rng = random.Random(7)
    step = 30 * 86400 / n
    with_journal: list[str] = []
    chunk = 20_000
    for lo in range(0, n, chunk):
        run_rows, entries, failed = [], [], []
        for i in range(lo, min(n, lo + chunk)):
            created = start - 30 * 86400 + i * step
            run_id = f"{rng.getrandbits(128):032x}"
            run_id = f"{run_id[:8]}-{run_id[8:12]}-4{run_id[13:16]}-a{run_id[17:20]}-{run_id[20:]}"
            status = _status(i)
            done = status in ("completed", "failed", "cancelled", "dead_lettered")
            text = codec.dumps({"order": i, "wei": 10**21 + i})
            run_rows.append(dict(
                id=run_id, workflow=WORKFLOWS[i % len(WORKFLOWS)], status=status, input=text,
                output=codec.dumps({"paid": 10**21 + i}) if status == "completed" else None,
                error='{"type": "ValueError", "message": "declined"}' if status == "failed" else None,
                idempotency_key=f"order-{i}", input_hash=hashlib.sha256(text.encode()).hexdigest(),
                created_at=created, updated_at=created + 2.5, ready_at=None if done else created + 3600,
                fence=1, cancel_requested=False, attempt_count=1, waiting_on='["approval"]' if status == "waiting"
                else None))
            if i % 10 == 0:
                with_journal.append(run_id)
                for p, name in enumerate(("quote", "reserve", "sign", "submit", "notify")):
                    entries.append(dict(run_id=run_id, branch="", position=p, key=name, kind="step", status="ok",
                                        output=codec.dumps({"step": name, "wei": 10**21 + i}), error=None,
                                        attempts=2 if i % 500 == 0 and p == 1 else 1,
                                        started_at=created + p * 0.4, finished_at=created + p * 0.4 + 0.3))
                if i % 500 == 0:
                    failed.append(dict(run_id=run_id, branch="", key="reserve", attempt=1,
                                       error='{"type": "TimeoutError", "message": "node busy"}',
                                       started_at=created + 0.2, finished_at=created + 0.3, next_at=created + 0.4))
        with app.engine.begin() as conn:
            conn.execute(runs.insert(), run_rows)
            if entries:
                conn.execute(journal.insert(), entries)
            if failed:
                conn.execute(attempts.insert(), failed)
    with app.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    return with_journal


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx
    import sqlalchemy as sa

    import chainflow as cf
    from chainflow.storage.schema import runs
    from chainflow.ui.server import create_app

    url = spec["target"] if spec["backend"] == "postgres" else f"sqlite:///{os.path.join(spec['target'], 'u.db')}"
    app = cf.Chainflow(url)
    app.ensure_schema()
    n = spec["runs"]
    start = time.time()
    t0 = time.perf_counter()
    journaled = _seed(app, n, start)
    seed_s = time.perf_counter() - t0
    with app.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar_one() == n
    rng = random.Random(11)
    day = start - 10 * 86400
    iso = lambda ts: time.strftime("%Y-%m-%dT%H:%M", time.gmtime(ts))  # noqa: E731

    async def measure() -> dict[str, list[float]]:
        timings: dict[str, list[float]] = {p: [] for p in PAGES}
        transport = httpx.ASGITransport(app=create_app(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
            async def get(path: str) -> httpx.Response:
                r = await client.get(path)
                assert r.status_code == 200, (path, r.status_code, r.text[:300])
                return r

            # a deep page's cursor, found by paging as a user would (not timed)
            path = "/runs?status=completed"
            for _ in range(spec["deep"] - 1):
                text = (await get(path)).text
                cursor = text.split('id="next-page" href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
                path = cursor
            deep = path
            urls = {"runs: newest": lambda: "/runs", "runs: status=completed": lambda: "/runs?status=completed",
                    "runs: workflow": lambda: f"/runs?workflow={rng.choice(WORKFLOWS)}",
                    "runs: dead_lettered": lambda: "/runs?status=dead_lettered",
                    "runs: 1-day range": lambda: f"/runs?since={iso(day)}&until={iso(day + 86400)}",
                    "runs: deep page (cursor)": lambda: deep,
                    "run page": lambda: f"/runs/{rng.choice(journaled)}"}
            for _ in range(REQUESTS + 2):  # interleaved; the first two rounds warm the caches
                for page, make in urls.items():
                    target = make()
                    t = time.perf_counter()
                    r = await get(target)
                    elapsed = (time.perf_counter() - t) * 1000
                    if page == "run page":
                        assert "quote" in r.text and "Timeline" in r.text
                    else:
                        assert "run-row" in r.text, (target, r.text[:300])
                    timings[page].append(elapsed)
        return {p: v[2:] for p, v in timings.items()}

    timings = asyncio.run(measure())
    app.engine.dispose()
    return {"runs": n, "seed_s": seed_s,
            "ms": {p: {"median": statistics.median(v), "p95": sorted(v)[int(len(v) * 0.95) - 1], "max": max(v)}
                   for p, v in timings.items()}}


def run(opts: Options, command: str) -> str:
    env = environment(opts)
    n = QUICK_RUNS if opts.quick else RUNS
    figs = {(b, p): Figure() for b in opts.backends for p in PAGES}
    p95 = {(b, p): Figure() for b in opts.backends for p in PAGES}
    seeds: dict[str, list[float]] = {b: [] for b in opts.backends}
    for rep in range(1, opts.reps + 1):
        for backend in opts.backends:
            result = run_on_database("ui_pages", {"backend": backend, "runs": n, "deep": 10 if opts.quick else DEEP},
                                     backend, opts)
            if failed(result, [f[(backend, p)] for f in (figs, p95) for p in PAGES], f"rep {rep} {backend}"):
                continue
            seeds[backend].append(result["seed_s"])
            for p in PAGES:
                figs[(backend, p)].values.append(result["ms"][p]["median"])
                p95[(backend, p)].values.append(result["ms"][p]["p95"])
            log(f"  rep {rep} {backend}: seeded in {result['seed_s']:.0f}s; "
                + ", ".join(f"{p} {result['ms'][p]['median']:.1f} ms" for p in PAGES))
    out = [f"## ui_pages: {TITLE}", "", environment_markdown(env, command),
           f"- **Repetitions:** {opts.reps}, each a fresh process and database seeded with {n:,} runs "
           f"(journals of 5 entries for one run in 10); {REQUESTS} timed requests per page and repetition, "
           "interleaved, after two warm-up rounds", ""]
    for backend in opts.backends:
        seed = f"{statistics.median(seeds[backend]):.0f} s" if seeds[backend] else "-"
        out += [f"### {backend} (seeding took {seed})", "", "| page | median ms | p95 ms |", "|---|---|---|"]
        for p in PAGES:
            out.append(f"| {p} | {figs[(backend, p)].cell('{:.1f}')} | {p95[(backend, p)].cell('{:.1f}')} |")
        out.append("")
    out += ["Server time is one whole request through the dashboard's ASGI app in-process (httpx's ASGI "
            "transport: parameter checks, the read transaction, the template), no network and no browser.  "
            "Figures: median of the repetitions' medians (min–max).  Target: < 100 ms per page.", ""]
    return "\n".join(out)
