"""Benchmark 1, engine overhead: N workflows x K no-op steps, in steps/s.

Peers, each in ``bench/engine_<peer>.py`` with ``available()`` and ``run(spec)``:

floor      one INSERT+COMMIT per step, hand-written (the cost of a durable commit)
dbos       DBOS Transact, a workflow of K ``@DBOS.step()`` no-ops, DBOS's own settings
dbos_wal   the same with its SQLite system database in WAL mode, synchronous=FULL (SQLite only)
chainflow  a chainflow workflow of K ``ctx.step`` no-ops (``async def``)
chainflow_sync  the same with plain ``def`` no-ops, which chainflow runs in a thread

Order of execution: repetition-major and interleaved, so drift on the machine (other
load, thermal, the page cache) spreads over every peer alike::

    rep 1: sqlite 500x5 sequential: floor, dbos, dbos_wal, chainflow, chainflow_sync; sqlite 500x5 32-in-flight: ...
    rep 2: ...

The ratio columns compare chainflow with each DBOS setting and with the best of them
per row ("best DBOS"), so no choice of DBOS setting makes chainflow look better.
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

from .harness import (
    Figure,
    Options,
    environment,
    environment_markdown,
    fresh_database,
    log,
    pg_problem,
    ratio,
    run_child,
)

TITLE = "engine overhead: N workflows x K no-op steps (steps/s, higher is better)"
PEERS = ["floor", "dbos", "dbos_wal", "chainflow", "chainflow_sync"]
PEER_LABEL = {"floor": "floor", "dbos": "DBOS", "dbos_wal": "DBOS (WAL)", "chainflow": "chainflow",
              "chainflow_sync": "chainflow (sync steps)"}
# a peer that is another peer's module with different options in the spec
PEER_VARIANT = {"chainflow_sync": ("chainflow", {"steps": "sync"}), "dbos_wal": ("dbos", {"dbos_journal": "wal"})}
# peers that exist on some backends only (WAL is a SQLite journal mode)
PEER_BACKENDS = {"dbos_wal": ("sqlite",)}
# a ratio denominator standing for the fastest (highest median) of several peers in a row,
# and the tag its cells carry to say which one that was
BEST = {"best_dbos": {"dbos": "default", "dbos_wal": "WAL"}}
BEST_LABEL = {"best_dbos": "best DBOS"}
# (numerator, denominator) of the ratio columns, shown when both ran on the backend
RATIOS = [("chainflow", "best_dbos"), ("chainflow", "dbos"), ("chainflow", "dbos_wal"), ("chainflow", "floor"),
          ("chainflow_sync", "best_dbos"), ("chainflow_sync", "dbos"), ("chainflow_sync", "dbos_wal"),
          ("chainflow_sync", "floor"), ("dbos", "floor"), ("dbos_wal", "floor")]
SIZES = [(500, 5), (200, 20)]
QUICK_SIZES = [(6, 3)]
MODES = ["sequential", "inflight"]
CONCURRENCY = 32
BACKEND_LABEL = {"sqlite": "SQLite", "postgres": "Postgres"}


def mode_label(mode: str) -> str:
    return "sequential" if mode == "sequential" else f"{CONCURRENCY} in flight"


def available() -> str | None:
    return None


def _variant(peer: str) -> tuple[str, dict[str, Any]]:
    """The module a peer runs and the options it adds to the spec."""
    return PEER_VARIANT.get(peer, (peer, {}))


def _peer_module(peer: str) -> Any:
    return importlib.import_module(f"bench.engine_{_variant(peer)[0]}")


def runs_on(peer: str, backend: str) -> bool:
    return backend in PEER_BACKENDS.get(peer, (backend,))


def best_ratio(num: Figure, group: dict[str, Figure]) -> str:
    """``num`` over the fastest of ``group`` (tag -> figure), tagged with which one that was.

    Only when every member has a figure: if one failed, the fastest cannot be known, and
    a ratio against the slower one would flatter ``num``."""
    if not all(f.ok for f in group.values()):
        return "—"
    tag, best = max(group.items(), key=lambda item: item[1].median)
    text = ratio(num, best)
    return text if text == "—" else f"{text} ({tag})"


# --- child side ---------------------------------------------------------------------


def child(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="enabled")
        profiler.start()
        try:
            result = _peer_module(spec["peer"]).run(spec)
        finally:
            profiler.stop()
            with open(spec["profile"], "w") as fh:
                fh.write(profiler.output_html())
    else:
        result = _peer_module(spec["peer"]).run(spec)
    steps = spec["n"] * spec["k"]
    result["steps"] = steps
    result["steps_per_s"] = steps / result["elapsed"]
    return result


# --- parent side --------------------------------------------------------------------

Key = tuple[str, int, int, str, str]  # backend, n, k, mode, peer


def run(opts: Options, command: str) -> str:
    env = environment(opts)
    sizes = QUICK_SIZES if opts.quick else SIZES
    peers = [p for p in PEERS if opts.wants(p)]
    if opts.only and opts.only - set(PEERS):
        log(f"  ignoring unknown peer(s) {', '.join(sorted(opts.only - set(PEERS)))}; engine peers: {', '.join(PEERS)}")
    unavailable: dict[str, str] = {}
    for peer in peers:
        try:
            reason = _peer_module(peer).available()
        except Exception as exc:  # noqa: BLE001
            reason = f"not available: {type(exc).__name__}: {exc}"
        if reason:
            unavailable[peer] = reason
            log(f"  {peer}: {reason}")
    skipped_backends: dict[str, str] = {}
    if "postgres" in opts.backends:
        problem = pg_problem(opts.pg_admin_url)
        if problem:
            skipped_backends["postgres"] = f"skipped: Postgres unreachable ({problem})"
            log(f"  postgres: {skipped_backends['postgres']}")

    figures: dict[Key, Figure] = {}
    for backend in opts.backends:
        for n, k in sizes:
            for mode in MODES:
                for peer in (p for p in peers if runs_on(p, backend)):
                    fig = Figure()
                    fig.problem = unavailable.get(peer) or skipped_backends.get(backend)
                    figures[(backend, n, k, mode, peer)] = fig

    total = sum(1 for f in figures.values() if f.problem is None) * opts.reps
    done = 0
    started = time.monotonic()
    for rep in range(1, opts.reps + 1):
        for backend in opts.backends:
            for n, k in sizes:
                for mode in MODES:
                    for peer in (p for p in peers if runs_on(p, backend)):
                        fig = figures[(backend, n, k, mode, peer)]
                        if fig.problem is not None:
                            continue
                        spec = {"peer": peer, "backend": backend, "n": n, "k": k, "mode": mode,
                                "concurrency": CONCURRENCY, **_variant(peer)[1]}
                        if opts.profile_dir:
                            spec["profile"] = os.path.join(
                                opts.profile_dir, f"engine_{backend}_{n}x{k}_{mode}_{peer}_rep{rep}.html")
                        with fresh_database(backend, opts) as db:
                            spec["db"] = db
                            result = run_child("engine", spec, opts.timeout)
                        done += 1
                        where = f"rep {rep}/{opts.reps} {backend} {n}x{k} {mode_label(mode)} {peer}"
                        if "error" in result:
                            fig.problem = f"failed: {result['error']}"
                            log(f"  [{done}/{total}] {where}: FAILED {result['error']}\n"
                                + "\n".join("      " + line for line in result.get("detail", "").splitlines()))
                            continue
                        fig.values.append(result["steps_per_s"])
                        fig.raw.append(result | {"rep": rep})
                        log(f"  [{done}/{total}] {where}: {result['steps_per_s']:,.0f} steps/s "
                            f"({result['elapsed']:.2f}s, cpu {result['cpu']:.2f}s, {result.get('note', '')}) "
                            f"[{time.monotonic() - started:.0f}s]")
    return render(opts, env, command, sizes, peers, figures, skipped_backends)


def render(opts: Options, env: dict[str, Any], command: str, sizes: list[tuple[int, int]], peers: list[str],
           figures: dict[Key, Figure], skipped_backends: dict[str, str]) -> str:
    out = [f"## engine: {TITLE}", "", environment_markdown(env, command),
           f"- **Repetitions:** {opts.reps} per figure, each a fresh subprocess on a fresh database"
           + (" (**--quick: tiny sizes, figures meaningless**)" if opts.quick else "")
           + (" (**--profile: run under pyinstrument, figures inflated**)" if opts.profile_dir else ""), ""]
    out += [
        ("Workload: N workflows, each running K no-op steps in a loop; a figure is N×K / wall time of the "
        "timed region (first start to last completion; imports, schema creation and engine launch excluded). "
        "*sequential*: one workflow at a time, started and awaited before the next. "
        f"*{CONCURRENCY} in flight*: {CONCURRENCY} workflows running concurrently. "
        "Floor: one INSERT+COMMIT per step (SQLite WAL + synchronous=FULL; Postgres synchronous_commit=on); "
        f"its {CONCURRENCY}-in-flight figure is {CONCURRENCY} threads with their own connections on Postgres and "
        "the sequential loop on SQLite (single writer, no group commit). "
        "DBOS: its own settings (on SQLite a rollback journal, synchronous=FULL); DBOS (WAL), SQLite only: its "
        "system database in WAL mode with synchronous=FULL, the durability of chainflow's default and the floor. "
        "*best DBOS* is the faster of the two in each row, tagged (default) or (WAL). See bench/README.md."),
        "",
    ]
    for backend in opts.backends:
        out.append(f"### {BACKEND_LABEL[backend]}")
        out.append("")
        if backend in skipped_backends:
            out += [skipped_backends[backend], ""]
            continue
        here = [p for p in peers if runs_on(p, backend)]
        out += _tables(backend, sizes, here, figures)
    out += ["<details><summary>Raw repetitions (steps/s, wall s, process CPU s, variant)</summary>", "",
            "| backend | workload | mode | peer | rep | steps/s | wall s | CPU s | variant |",
            "|---|---|---|---|---|---|---|---|---|"]
    for (backend, n, k, mode, peer), fig in figures.items():
        for r in fig.raw:
            out.append(f"| {backend} | {n}×{k} | {mode_label(mode)} | {peer} | {r['rep']} | "
                       f"{r['steps_per_s']:,.0f} | {r['elapsed']:.2f} | {r['cpu']:.2f} | {r.get('note', '')} |")
        if fig.problem and not fig.problem.startswith(("not available", "skipped")):
            out.append(f"| {backend} | {n}×{k} | {mode_label(mode)} | {peer} | – | {fig.problem} | | | |")
    out += ["", "</details>", ""]
    return "\n".join(out)


def _tables(backend: str, sizes: list[tuple[int, int]], here: list[str], figures: dict[Key, Figure]) -> list[str]:
    """One backend's figures table, then its ratios table (peers that ran on it only)."""

    def shown(peer: str) -> bool:
        # a best-of column only where it has a choice; otherwise it repeats the peer's own
        return sum(m in here for m in BEST[peer]) >= 2 if peer in BEST else peer in here

    def label(peer: str) -> str:
        return BEST_LABEL.get(peer) or PEER_LABEL[peer]

    def cell(f: dict[str, Figure], a: str, b: str) -> str:
        if b in BEST:
            return best_ratio(f[a], {tag: f[m] for m, tag in BEST[b].items()})
        return ratio(f[a], f[b])

    ratios = [(a, b) for a, b in RATIOS if shown(a) and shown(b)]
    tables = [["workload", "mode"] + [f"{PEER_LABEL[p]} steps/s" for p in here]]
    if ratios:
        tables.append(["workload", "mode"] + [f"{label(a)} / {label(b)}" for a, b in ratios])
    out: list[str] = []
    for i, head in enumerate(tables):
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join("---" for _ in head) + "|")
        for n, k in sizes:
            for mode in MODES:
                f = {p: figures[(backend, n, k, mode, p)] for p in here}
                cells = [f[p].cell() for p in here] if i == 0 else [cell(f, a, b) for a, b in ratios]
                out.append("| " + " | ".join([f"{n}×{k}", mode_label(mode)] + cells) + " |")
        out.append("")
    return out
