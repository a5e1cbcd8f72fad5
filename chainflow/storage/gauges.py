"""Gauges read from the database (runs by status, submissions by state, recorded
reorgs), so any process -- the CLI, a scraper -- sees the whole deployment, not just
its own counters (``chainflow.metrics``)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from prometheus_client.core import GaugeMetricFamily, Metric

from .schema import reorgs, runs, submissions


def database_series(conn: Any) -> list[Metric]:
    """Gauges read from the database, so any process (the CLI, a scraper) sees the
    whole deployment, not just its own counters."""
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
