"""Gauges read from the database (runs by status, submissions by state, recorded
reorgs, followed heads), so any process -- the CLI, a scraper -- sees the whole
deployment, not just its own counters (``chainflow.metrics``); and the HTTP endpoint
a worker serves both on (``chainflow worker --metrics-port``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from .. import metrics
from ..lograte import FailureLog
from ..states import TERMINAL, SubmissionState
from .database import Database
from .schema import headers, reorgs, runs, submissions

_SETTLED_FOR_GOOD = (SubmissionState.FINAL, SubmissionState.FAILED)


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
    active = GaugeMetricFamily("chainflow_active_runs", "Unfinished runs in the database, by workflow and status.",
                               labels=["workflow", "status"])
    for workflow, status, n in conn.execute(
        sa.select(runs.c.workflow, runs.c.status, sa.func.count()).where(runs.c.status.not_in(TERMINAL))
        .group_by(runs.c.workflow, runs.c.status)
    ):
        active.add_metric([workflow, status], int(n))
    stuck = GaugeMetricFamily("chainflow_submissions_stuck", "Unsettled submissions flagged stuck (fee budget "
                              "spent), by chain.", labels=["chain"])
    for chain, n in conn.execute(
        sa.select(submissions.c.chain, sa.func.count()).where(submissions.c.stuck_since.is_not(None),
                                                               submissions.c.state.not_in(_SETTLED_FOR_GOOD))
        .group_by(submissions.c.chain)
    ):
        stuck.add_metric([chain], int(n))
    return [by_status, by_state, events, blocks, active, stuck, *_heads(conn)]


def _heads(conn: Any) -> list[Metric]:
    """The highest header each chain's tracker stored, and how old its block is: a
    head that stops rising ages, whichever process (or none) follows the chain."""
    height = GaugeMetricFamily("chainflow_followed_head_height", "Highest block the trackers stored, by chain.",
                               labels=["chain"])
    age = GaugeMetricFamily("chainflow_followed_head_age_seconds", "Seconds since the block time of the highest "
                            "stored block (head lag), by chain.", labels=["chain"])
    now = time.time()  # block timestamps are wall-clock
    for chain, number, stamp in followed_heads(conn):
        height.add_metric([chain], number)
        age.add_metric([chain], max(0.0, now - stamp))
    return [height, age]


def followed_heads(conn: Any) -> list[tuple[str, int, int]]:
    """(chain, number, block timestamp) of each chain's highest stored, canonical header."""
    top = (sa.select(headers.c.chain, sa.func.max(headers.c.number).label("number"))
           .where(headers.c.orphaned == sa.false()).group_by(headers.c.chain).subquery())
    rows = conn.execute(
        sa.select(headers.c.chain, headers.c.number, headers.c.timestamp)
        .join(top, sa.and_(headers.c.chain == top.c.chain, headers.c.number == top.c.number))
        .where(headers.c.orphaned == sa.false()).order_by(headers.c.chain))
    return [(r.chain, int(r.number), int(r.timestamp)) for r in rows]


class Scrape:
    """A collector for one scrape: this process's series, then the database's gauges
    read at that moment.  A database that cannot answer costs its gauges, not the
    scrape: the process's own series still say what it was doing."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._failures = FailureLog(logging.getLogger("chainflow.metrics"), "reading the database for a scrape")

    def collect(self) -> Iterable[Metric]:
        yield from metrics.REGISTRY.collect()
        try:
            found = self.database.read(database_series)
        except Exception as exc:  # noqa: BLE001 - any driver failure; logged, rate-limited
            self._failures.failed(exc, "failed")
            return
        self._failures.recovered()
        yield from found


def serve(database: Database, port: int, host: str = "0.0.0.0") -> tuple[Any, Any]:
    """Serve ``/metrics`` (Prometheus text) on ``host:port`` in a daemon thread; port 0
    picks a free one (``server.server_port``).  Returns (server, thread)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Scrape(database))
    return start_http_server(port, host, registry=registry)
