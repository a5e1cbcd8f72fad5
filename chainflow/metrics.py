"""Process-local counters, exported in Prometheus' text format.

Kept dependency-free and cheap (a dict increment under the GIL) because the hot
path — step commits, broadcasts, heads — bumps them.
"""

from __future__ import annotations

from collections import Counter
from threading import Lock

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
}


def inc(name: str, value: int = 1, **labels: str) -> None:
    with _lock:
        _counts[(name, tuple(sorted(labels.items())))] += value


def snapshot() -> dict[str, int]:
    with _lock:
        items = list(_counts.items())
    return {_series(name, labels): v for (name, labels), v in sorted(items)}


def exposition() -> str:
    lines: list[str] = []
    seen: set[str] = set()
    for series, value in snapshot().items():
        name = series.split("{", 1)[0]
        if name not in seen:
            seen.add(name)
            lines += [f"# HELP {name} {HELP.get(name, name)}", f"# TYPE {name} counter"]
        lines.append(f"{series} {value}")
    return "\n".join(lines) + "\n"


def _series(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"
