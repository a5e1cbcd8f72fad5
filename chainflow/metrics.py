"""Process-local counters, exported in Prometheus' text format.

Kept dependency-free and cheap (a dict increment under the GIL) because the hot
path — step commits, broadcasts, heads — bumps them.
"""

from __future__ import annotations

from collections import Counter
from threading import Lock
from typing import Any

_counts: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
_lock = Lock()

HELP = {
    "chainflow_runs_finished_total": "Runs that reached a terminal status, by status.",
    "chainflow_steps_total": "Steps journaled by this process, by outcome.",
    "chainflow_reorgs_total": "Chain reorganisations detected, by chain.",
    "chainflow_reorg_depth_blocks_total": "Blocks orphaned by detected reorganisations, by chain.",
    "chainflow_rollbacks_total": "Runs rolled back because a reorg broke a finality assumption.",
    "chainflow_broadcasts_total": "Raw transactions (re-)broadcast, by outcome.",
    "chainflow_fee_bumps_total": "Same-nonce replacements with raised fees, by chain.",
    "chainflow_runs": "Runs in the database, by status.",
    "chainflow_submissions": "On-chain submissions in the database, by chain and state.",
    "chainflow_reorgs_recorded": "Reorg events the trackers recorded, by chain.",
    "chainflow_reorg_blocks_recorded": "Blocks orphaned by recorded reorgs, by chain.",
}


def inc(name: str, value: int = 1, **labels: str) -> None:
    key = (name, tuple(sorted(labels.items())) if len(labels) > 1 else tuple(labels.items()))
    with _lock:
        _counts[key] += value


def snapshot() -> dict[str, int]:
    with _lock:
        items = list(_counts.items())
    return {_series(name, labels): v for (name, labels), v in sorted(items)}


def database_series(conn: Any) -> dict[str, int]:
    """Gauges read from the database, so any process (the CLI, a scraper) sees the
    whole deployment, not just its own counters."""
    import sqlalchemy as sa

    from .schema import reorgs, runs, submissions

    out: dict[str, int] = {}
    for status, n in conn.execute(sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)):
        out[_series("chainflow_runs", (("status", status),))] = int(n)
    for chain, state, n in conn.execute(
        sa.select(submissions.c.chain, submissions.c.state, sa.func.count())
        .group_by(submissions.c.chain, submissions.c.state)
    ):
        out[_series("chainflow_submissions", (("chain", chain), ("state", state)))] = int(n)
    for chain, n, depth in conn.execute(
        sa.select(reorgs.c.chain, sa.func.count(), sa.func.coalesce(sa.func.sum(reorgs.c.depth), 0))
        .group_by(reorgs.c.chain)
    ):
        out[_series("chainflow_reorgs_recorded", (("chain", chain),))] = int(n)
        out[_series("chainflow_reorg_blocks_recorded", (("chain", chain),))] = int(depth)
    return out


def exposition(extra: dict[str, int] | None = None) -> str:
    lines: list[str] = []
    seen: set[str] = set()
    for series, value in sorted({**snapshot(), **(extra or {})}.items()):
        name = series.split("{", 1)[0]
        if name not in seen:
            seen.add(name)
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# HELP {name} {HELP.get(name, name)}", f"# TYPE {name} {kind}"]
        lines.append(f"{series} {value}")
    return "\n".join(lines) + "\n"


def _series(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"
