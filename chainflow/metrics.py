"""Process-local counters on prometheus-client, and the database gauges ``chainflow metrics`` prints.

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
from prometheus_client.core import GaugeMetricFamily, Metric

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


def database_series(conn: Any) -> list[Metric]:
    """Gauges read from the database, so any process (the CLI, a scraper) sees the
    whole deployment, not just its own counters."""
    import sqlalchemy as sa

    from .schema import reorgs, runs, submissions

    by_status = GaugeMetricFamily("chainflow_runs", "Runs in the database, by status.", labels=["status"])
    for status, n in conn.execute(sa.select(runs.c.status, sa.func.count()).group_by(runs.c.status)):
        by_status.add_metric([status], int(n))
    by_state = GaugeMetricFamily("chainflow_submissions", "On-chain submissions in the database, by chain and state.",
                                 labels=["chain", "state"])
    for chain, state, n in conn.execute(
        sa.select(submissions.c.chain, submissions.c.state, sa.func.count())
        .group_by(submissions.c.chain, submissions.c.state)
    ):
        by_state.add_metric([chain, state], int(n))
    events = GaugeMetricFamily("chainflow_reorgs_recorded", "Reorg events the trackers recorded, by chain.",
                               labels=["chain"])
    blocks = GaugeMetricFamily("chainflow_reorg_blocks_recorded", "Blocks orphaned by recorded reorgs, by chain.",
                               labels=["chain"])
    for chain, n, depth in conn.execute(
        sa.select(reorgs.c.chain, sa.func.count(), sa.func.coalesce(sa.func.sum(reorgs.c.depth), 0))
        .group_by(reorgs.c.chain)
    ):
        events.add_metric([chain], int(n))
        blocks.add_metric([chain], int(depth))
    return [by_status, by_state, events, blocks]


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
