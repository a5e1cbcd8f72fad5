"""Process-local counters on prometheus-client (``chainflow metrics`` adds the database's
gauges from ``storage.gauges``).

The counters live in ``REGISTRY``, a ``CollectorRegistry`` of this process rather than
prometheus-client's global default, so an application embedding chainflow keeps its own
registry free of our names and can still serve ours next to it, e.g.
``prometheus_client.start_http_server(9464, registry=chainflow.metrics.REGISTRY)``.
(With ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client keeps the values in its
multi-process files as usual.)

``inc`` runs once per journaled step on the group-commit hot path, so it caches the
labelled child's bound ``inc`` per (name, labels) tuple: a call is a dict lookup plus the
child's locked add, not prometheus-client's label validation and child lookup each time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import Metric

REGISTRY = CollectorRegistry(auto_describe=True)

_COUNTERS: dict[str, Counter] = {
    name: Counter(name, doc, labels, registry=REGISTRY)
    for name, doc, labels in (
        ("chainflow_runs_finished_total", "Runs that reached a terminal status, by status.", ("status",)),
        ("chainflow_steps_total", "Steps journaled by this process, by outcome.", ("outcome",)),
        ("chainflow_reorgs_total", "Chain reorganisations detected, by chain.", ("chain",)),
        ("chainflow_reorg_depth_blocks_total", "Blocks orphaned by detected reorganisations, by chain.",
         ("chain",)),
        ("chainflow_rollbacks_total", "Runs rolled back because a reorg broke a finality assumption.",
         ("chain",)),
        ("chainflow_broadcasts_total", "Raw transactions (re-)broadcast, by outcome.", ("chain", "outcome")),
        ("chainflow_fee_bumps_total", "Same-nonce replacements with raised fees, by chain.", ("chain",)),
        ("chainflow_submissions_stuck_total", "Submissions left unmined with their fee budget spent, by chain.",
         ("chain",)),
        ("chainflow_batches_total", "Batched payout transactions recorded, by chain.", ("chain",)),
        ("chainflow_schedule_fires_total", "Runs started by schedules' fires, by schedule.", ("schedule",)),
    )
}

_children: dict[tuple[str, tuple[tuple[str, Any], ...]], Callable[[float], None]] = {}


def inc(name: str, value: int = 1, **labels: Any) -> None:
    """Add ``value`` to counter ``name`` (one of ``_COUNTERS``) for ``labels``."""
    key = (name, tuple(labels.items()))
    add = _children.get(key)
    if add is None:
        add = _children[key] = _child(name, labels)
    add(value)


def _child(name: str, labels: dict[str, Any]) -> Callable[[float], None]:
    counter = _COUNTERS.get(name)
    if counter is None:
        raise KeyError(f"unknown metric {name!r}; chainflow counts: {', '.join(_COUNTERS)}")
    # keyword order differs between call sites, but .labels() finds the same child for both
    return counter.labels(**{k: str(v) for k, v in labels.items()}).inc


def exposition(extra: Iterable[Metric] = ()) -> str:
    """This process's counters plus ``extra`` in Prometheus' text format; families
    without a sample are left out (a CLI process has counted nothing of its own)."""
    return generate_latest(_Fixed([m for m in [*REGISTRY.collect(), *extra] if m.samples])).decode()


class _Fixed:
    """A collector over families already collected (what ``exposition`` renders)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
