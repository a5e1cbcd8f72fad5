"""Process counters on prometheus-client: what ``metrics.inc`` adds, that the engine's
hot path really feeds them, and how ``exposition`` renders them."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

import chainflow as cf
from chainflow import metrics
from chainflow.testing import WorkflowTester


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_inc_adds_per_label_set_whatever_the_keyword_order() -> None:
    before = value("chainflow_broadcasts_total", chain="t-order", outcome="accepted")
    metrics.inc("chainflow_broadcasts_total", chain="t-order", outcome="accepted")
    metrics.inc("chainflow_broadcasts_total", outcome="accepted", chain="t-order")  # cached apart, same child
    metrics.inc("chainflow_broadcasts_total", 3, chain="t-order", outcome="accepted")
    metrics.inc("chainflow_broadcasts_total", chain="t-order", outcome="rejected")
    assert value("chainflow_broadcasts_total", chain="t-order", outcome="accepted") == before + 5
    assert value("chainflow_broadcasts_total", chain="t-order", outcome="rejected") >= 1


def test_unknown_counter_is_named_in_the_error() -> None:
    with pytest.raises(KeyError, match="chainflow_stepz_total"):
        metrics.inc("chainflow_stepz_total", outcome="ok")


def test_wrong_labels_are_refused() -> None:
    with pytest.raises(ValueError):
        metrics.inc("chainflow_step_attempts_total", chain="x")


def test_the_registry_is_chainflows_own() -> None:
    """An application's default registry must not receive (or clash with) our names."""
    from prometheus_client import REGISTRY as default

    assert metrics.REGISTRY is not default
    assert default.get_sample_value("chainflow_reorgs_total", {"chain": "t"}) is None


def test_a_run_counts_its_steps_and_its_end(tmp_path: object) -> None:
    app = cf.Chainflow(f"sqlite:///{tmp_path}/m.db", clock=cf.FakeClock())

    @app.workflow("three")
    async def three(ctx: cf.Context, _: object) -> int:
        for i in range(3):
            await ctx.step(f"s{i}", lambda i=i: i)
        return 3

    outcome = asyncio.run(WorkflowTester(app).run("three", None))
    app.engine.dispose()
    assert outcome.status == "completed"
    assert value("chainflow_step_attempts_total", workflow="three", outcome="ok") == 3
    assert value("chainflow_runs_started_total", workflow="three") == 1
    assert value("chainflow_runs_finished_total", workflow="three", status="completed") == 1
    assert value("chainflow_run_duration_seconds_count", workflow="three", status="completed") == 1


def test_exposition_is_prometheus_text_and_leaves_out_empty_families() -> None:
    metrics.inc("chainflow_fee_bumps_total", chain="t-expo")
    text = metrics.exposition()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    bumps = families["chainflow_fee_bumps"]
    assert bumps.type == "counter"
    assert any(s.name == "chainflow_fee_bumps_total" and s.labels == {"chain": "t-expo"} and s.value >= 1
               for s in bumps.samples)
    assert "# HELP chainflow_fee_bumps_total Same-nonce replacements with raised fees, by chain." in text
    for f in families.values():
        assert f.samples, f.name
