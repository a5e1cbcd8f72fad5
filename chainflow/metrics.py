"""Process-local counters, histograms and gauges on prometheus-client (``chainflow metrics`` adds the database's
gauges from ``storage.gauges``).

The counters live in ``REGISTRY``, a ``CollectorRegistry`` of this process rather than
prometheus-client's global default, so an application embedding chainflow keeps its own
registry free of our names and can still serve ours next to it, e.g.
``prometheus_client.start_http_server(9464, registry=chainflow.metrics.REGISTRY)``.
(With ``PROMETHEUS_MULTIPROC_DIR`` set, prometheus-client keeps the values in its
multi-process files as usual.)

``inc`` and ``observe`` cache the labelled child's bound method per (name, labels)
tuple: a call is a dict lookup plus the child's locked add, not prometheus-client's
label validation and child lookup each time.  What runs once per step or run keeps the
bound method itself (``child``; ``events`` does), skipping even the key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric

REGISTRY = CollectorRegistry(auto_describe=True)

_COUNTERS: dict[str, Counter] = {
    name: Counter(name, doc, labels, registry=REGISTRY)
    for name, doc, labels in (
        ("chainflow_runs_started_total", "Runs created by this process, by workflow.", ("workflow",)),
        ("chainflow_runs_finished_total", "Runs that reached a terminal status, by workflow and status.",
         ("workflow", "status")),
        ("chainflow_runs_compensated_total", "Runs whose compensations ran (failed, cancelled or timed out), "
         "by workflow.", ("workflow",)),
        ("chainflow_step_attempts_total", "Step and compensation attempts, by workflow and outcome "
         "(ok, retried, failed).", ("workflow", "outcome")),
        ("chainflow_step_failures_total", "Steps that failed for good (retries exhausted), by workflow.",
         ("workflow",)),
        ("chainflow_reorgs_total", "Chain reorganisations detected, by chain.", ("chain",)),
        ("chainflow_finality_violations_total", "Final submissions whose block a reorg orphaned, by chain.",
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
_HISTOGRAMS: dict[str, Histogram] = {
    name: Histogram(name, doc, labels, registry=REGISTRY, buckets=buckets)
    for name, doc, labels, buckets in (
        # payment runs last from milliseconds to days (finality waits, approvals, sleeps)
        ("chainflow_run_duration_seconds", "Time from a run's creation to its end, by workflow and status.",
         ("workflow", "status"), (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 21600, 86400, 604800)),
        # one attempt of a step (a submit step's includes its wait for finality)
        ("chainflow_step_duration_seconds", "Duration of one step attempt, by workflow and outcome.",
         ("workflow", "outcome"), (0.001, 0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 3600)),
        ("chainflow_reorg_depth_blocks", "Detected reorganisations by depth (blocks orphaned), by chain.",
         ("chain",), (1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128)),
    )
}
_GAUGES: dict[str, Gauge] = {
    name: Gauge(name, doc, labels, registry=REGISTRY)
    for name, doc, labels in (
        ("chainflow_chain_head_height", "The node's head as this process's tracker last saw it, by chain.",
         ("chain",)),
        ("chainflow_chain_head_lag_blocks", "Blocks the tracker's followed head is behind the node's head, "
         "by chain.", ("chain",)),
        ("chainflow_chain_stalled", "1 while the chain's head has not advanced for TrackerConfig.stall_after "
         "seconds (or the node cannot be read), by chain.", ("chain",)),
    )
}

_children: dict[tuple[str, tuple[tuple[str, Any], ...]], Callable[[float], None]] = {}


def inc(name: str, value: int = 1, **labels: Any) -> None:
    """Add ``value`` to counter ``name`` (one of ``_COUNTERS``) for ``labels``."""
    _bound(name, labels)(value)


def child(name: str, **labels: Any) -> Callable[[float], None]:
    """What ``inc``, ``observe`` or ``set_gauge`` calls for ``name`` and ``labels``: a
    caller on a hot path keeps it rather than have the labels looked up each time."""
    return _bound(name, labels)


def observe(name: str, value: float, **labels: Any) -> None:
    """Record ``value`` in histogram ``name`` (one of ``_HISTOGRAMS``) for ``labels``."""
    _bound(name, labels)(value)


def set_gauge(name: str, value: float, **labels: Any) -> None:
    """Set gauge ``name`` (one of ``_GAUGES``) for ``labels``."""
    _bound(name, labels)(value)


def _bound(name: str, labels: dict[str, Any]) -> Callable[[float], None]:
    key = (name, tuple(labels.items()))
    fn = _children.get(key)
    if fn is None:
        fn = _children[key] = _child(name, labels)
    return fn


def _child(name: str, labels: dict[str, Any]) -> Callable[[float], None]:
    text = {k: str(v) for k, v in labels.items()}
    # keyword order differs between call sites, but .labels() finds the same child for both
    if name in _COUNTERS:
        return _COUNTERS[name].labels(**text).inc
    if name in _HISTOGRAMS:
        return _HISTOGRAMS[name].labels(**text).observe
    if name in _GAUGES:
        return _GAUGES[name].labels(**text).set
    raise KeyError(f"unknown metric {name!r}; chainflow has: {', '.join([*_COUNTERS, *_HISTOGRAMS, *_GAUGES])}")


def exposition(extra: Iterable[Metric] = ()) -> str:
    """This process's series plus ``extra`` in Prometheus' text format; families
    without a sample are left out (a CLI process has counted nothing of its own)."""
    return generate_latest(_Fixed([m for m in [*REGISTRY.collect(), *extra] if m.samples])).decode()


class _Fixed:
    """A collector over families already collected (what ``exposition`` renders)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families
