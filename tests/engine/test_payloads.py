"""Payloads survive the database exactly: big ints, Decimal, bytes, datetimes..."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

import chainflow as cf
from chainflow.testing import WorkflowTester

from ._util import error_type

TZ = dt.timezone(dt.timedelta(hours=5, minutes=30))

SAMPLE: dict[str, Any] = {
    "wei": 2**64 + 1,
    "huge": 10**40,
    "negative": -(2**100),
    "edge": [2**53, 2**53 - 1, -(2**53)],
    "price": Decimal("1234.5600"),
    "tiny": Decimal("1E-30"),
    "nan": Decimal("NaN"),
    "raw": b"\x00\xff\x10tx",
    "when": dt.datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=TZ),
    "naive": dt.datetime(1999, 12, 31, 8, 0),
    "utc": dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
    "day": dt.date(2024, 1, 1),
    "span": dt.timedelta(days=3, microseconds=7),
    "id": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "pair": (1, "a", b"b"),
    "tags": {"x", "y"},
    "by_int": {1: "one", 2**70: "big"},
    "tagged": {"__cf__": "int", "v": "1"},  # user data that looks like the codec's tag
}


def assert_exact(actual: Any, expected: Any) -> None:
    """Equal *and* of the same types all the way down (1 == 1.0 == True is not enough)."""
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, dict):
        assert list(actual) == list(expected)
        for k in expected:
            assert_exact(actual[k], expected[k])
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_exact(a, e)
    elif isinstance(expected, Decimal):
        assert actual.as_tuple() == expected.as_tuple()
    elif isinstance(expected, dt.datetime):
        assert actual == expected and actual.utcoffset() == expected.utcoffset()
    else:
        assert actual == expected


async def test_payloads_round_trip_through_steps_input_and_output(make_app: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    def produce(value: dict[str, Any]) -> dict[str, Any]:
        return dict(value)

    @app.workflow("carry")
    async def carry(ctx: cf.Context, value: dict[str, Any]) -> dict[str, Any]:
        assert_exact(value, SAMPLE)
        out = await ctx.step("produce", produce, value)
        assert_exact(out, SAMPLE)  # fresh execution hands back the decoded copy
        await ctx.sleep("nap", 60)
        return await ctx.step("again", produce, out)  # a replay decodes it from the journal

    result = await WorkflowTester(app).run("carry", SAMPLE)
    assert result.status == "completed", result.error
    assert_exact(result.run.input, SAMPLE)
    assert_exact(result.output, SAMPLE)
    assert_exact(result.steps["produce"].output, SAMPLE)
    assert_exact(app.status(result.run.id).output, SAMPLE)


class Opaque:
    pass


async def test_unserialisable_step_output_fails_that_step_only(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    def weird() -> dict[str, Any]:
        calls.hit("weird")
        return {"fine": 1, "bad": [2, Opaque()]}

    @app.workflow("weird")
    async def weird_wf(ctx: cf.Context, _: Any) -> None:
        await ctx.step("before", calls.hit, "before", compensate=lambda _: calls.hit("undo before"))
        await ctx.step("weird", weird)
        await ctx.step("after", calls.hit, "after")

    result = await WorkflowTester(app).run("weird")
    assert result.status == "failed"
    assert calls.lines() == ["before", "weird", "undo before"]  # not retried, nothing after it
    step = result.steps["weird"]
    assert step.status == "error" and step.attempts == 1 and step.output is None
    assert step.error is not None and result.error is not None
    assert step.error["type"].endswith("PayloadError")
    for text in (step.error["message"], result.error["message"]):
        assert "'weird'" in text  # the step
        assert "Opaque" in text  # the type
    assert ".bad[1]" in step.error["message"]  # and where in the value
    assert app.attempts(result.run.id) == []
    assert [k for k in result.steps] == ["before", "weird", "compensate:before"]
    assert result.steps["before"].status == "ok"


async def test_unserialisable_workflow_result_fails_the_run(make_app: Any, calls: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    @app.workflow("bad-result")
    async def bad_result(ctx: cf.Context, _: Any) -> Any:
        await ctx.step("work", calls.hit, "work", compensate=lambda _: calls.hit("undo work"))
        return Opaque()

    result = await WorkflowTester(app).run("bad-result")
    assert result.status == "failed"
    assert error_type(result.error) == "chainflow.errors.PayloadError"
    assert result.error is not None
    assert "bad-result" in result.error["message"] and "Opaque" in result.error["message"]
    assert calls.lines() == ["work", "undo work"]


def test_unserialisable_input_or_signal_is_refused_up_front(make_app: Any) -> None:
    app = make_app(clock=cf.FakeClock())

    @app.workflow("anything")
    async def anything(ctx: cf.Context, value: Any) -> Any:
        return await ctx.wait_for("x")

    with pytest.raises(cf.PayloadError, match="Opaque"):
        app.start("anything", {"obj": Opaque()})
    assert app.runs() == []
    run_id = app.start("anything", 1).id
    with pytest.raises(cf.PayloadError, match="Opaque"):
        app.signal(run_id, "x", Opaque())
    assert app.status(run_id).status == "pending"
