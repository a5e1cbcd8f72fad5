"""Property test: every supported value survives chainflow.codec exactly."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import uuid
import zoneinfo
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from chainflow.errors import PayloadError
from chainflow.storage import codec

# --- strategies -------------------------------------------------------------------

big_ints = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.sampled_from([2**53 - 1, 2**53, 2**53 + 1, -(2**53), 2**64, 2**64 + 1, -(2**64) - 1, 2**256 - 1]),
)
decimals = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.decimals(places=18, allow_nan=False, allow_infinity=False),
    st.sampled_from([decimal.Decimal(s) for s in
                     ("NaN", "-NaN", "sNaN", "NaN123", "Infinity", "-Infinity", "-0", "0E-30", "1.10", "1E+40")]),
)
# Whole-second UTC offsets (real zones' LMT offsets have seconds).  Sub-second offsets
# are left out: CPython 3.11's fromisoformat turns "+00:00:00.000001" into UTC, so a
# timezone(timedelta(microseconds=1)) does not round-trip; no real zone has one.
offsets = st.builds(
    dt.timezone,
    st.integers(min_value=-(24 * 3600 - 1), max_value=24 * 3600 - 1).map(lambda s: dt.timedelta(seconds=s)),
)
_zones = sorted(zoneinfo.available_timezones())
zones = st.sampled_from(_zones).map(zoneinfo.ZoneInfo) if _zones else offsets
datetimes = st.one_of(
    st.datetimes(),  # naive
    st.datetimes(timezones=st.one_of(offsets, st.just(dt.UTC))),
    st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2200, 1, 1), timezones=zones),
)
times = st.one_of(st.times(), st.times(timezones=st.one_of(offsets, zones)))
floats = st.floats(allow_nan=True, allow_infinity=True)

hashable_leaves = st.one_of(
    st.none(), st.booleans(), big_ints, st.text(max_size=8), st.binary(max_size=8),
    decimals.filter(lambda d: not d.is_nan()),  # NaN keys are not even equal to themselves
    st.datetimes(), st.dates(), st.uuids(),
    st.floats(allow_nan=False),
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.one_of(st.tuples(inner, inner), st.frozensets(inner, max_size=3)),
    max_leaves=6,
)
leaves = st.one_of(
    st.none(), st.booleans(), big_ints, floats, st.text(), st.binary(), decimals, datetimes, st.dates(),
    times, st.timedeltas(), st.uuids(),
)
str_keys = st.one_of(st.text(max_size=10), st.sampled_from([codec.TAG, "v", "__cf__ ", ""]))


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.dictionaries(str_keys, inner, max_size=4),  # str keys, sometimes the tag key itself
        st.dictionaries(hashables, inner, max_size=4),  # any hashable key
        st.fixed_dictionaries({codec.TAG: st.sampled_from(["int", "map", "bytes", "x"]), "v": inner}),
    )


values = st.recursive(leaves, containers, max_leaves=25)


# --- exact comparison -------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Equality that also demands identical types and sees through NaN and -0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, decimal.Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, dt.datetime):
        if (a.tzinfo is None) != (b.tzinfo is None):
            return False
        return a.replace(tzinfo=None) == b.replace(tzinfo=None) and a.utcoffset() == b.utcoffset()
    if isinstance(a, dt.time):  # a zoned time has no offset: its zone is all it has
        return a == b and a.utcoffset() == b.utcoffset() and a.tzinfo == b.tzinfo
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        if len(a) != len(b):
            return False
        bk = list(b)
        # keys: order is kept by the codec; compare pairwise in order
        return all(same(ka, kb) and same(a[ka], b[kb]) for ka, kb in zip(a, bk))
    if isinstance(a, (set, frozenset)):
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    return bool(a == b)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
@example({codec.TAG: "int", "v": "5"})
@example({"a": {codec.TAG: None}})
@example({(1, 2): "tuple key", 3: "int key", None: "none key", b"k": "bytes key"})
@example({1: "int", "1": "str"})
@example({frozenset({1, 2}): {2**70: decimal.Decimal("-0.00")}})
@example([{"__cf__": "map", "v": [[1, 2]]}])
@example(dt.datetime(1951, 5, 1, tzinfo=zoneinfo.ZoneInfo("ROC")))  # in a DST gap: no instant of its own
@example(dt.datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("America/New_York")))  # repeated hour
def test_roundtrip_is_exact(value: Any) -> None:
    text = codec.dumps(value)
    json.loads(text)  # plain JSON, storable as TEXT anywhere
    back = codec.loads(text)
    assert same(back, value), (value, text, back)
    assert codec.dumps(back) == text  # stable: re-encoding the decoded value gives the same text
    text2, decoded = codec.roundtrip(value)
    assert text2 == text and same(decoded, value)


@settings(max_examples=200, deadline=None)
@given(big_ints)
def test_ints_never_lose_precision_in_json_readers(n: int) -> None:
    raw = json.loads(codec.dumps(n))
    if isinstance(raw, int):
        assert abs(raw) < 2**53  # only safe ints are stored as bare JSON numbers
    assert codec.loads(codec.dumps(n)) == n


@given(st.one_of(big_ints, st.booleans(), st.none()))
def test_scalars_are_written_as_the_encoder_writes_them(value: Any) -> None:
    # ``dumps`` writes these without the JSON encoder: the text must be the same bytes
    assert codec.dumps(value) == codec._ENCODER.encode(codec._encode(value, cast(Any, "")))


@given(st.sampled_from([object(), {1, 2}.__iter__(), lambda: 1, type("Opaque", (), {})()]))
def test_unsupported_values_raise_payload_error(bad: Any) -> None:
    with pytest.raises(PayloadError, match="cannot be stored exactly"):
        codec.dumps({"nested": [bad]}, what="output of step 'x'")


@given(datetimes.filter(lambda d: d.tzinfo is not None))
def test_aware_datetimes_keep_their_instant(value: dt.datetime) -> None:
    assume(value.utcoffset() is not None)
    back = codec.loads(codec.dumps(value))
    assert back == value
    assert back.utcoffset() == value.utcoffset()


# a container kind as the encoder tags it: each makes the value one level deeper
_WRAPPERS = {
    "list": lambda v: [v],
    "tuple": lambda v: (v,),
    "frozenset": lambda v: frozenset({v}),
    "str-key dict": lambda v: {"k": v},
    "int-key dict": lambda v: {1: v},  # three JSON levels: {"__cf__": "map", "v": [[1, v]]}
    "tag-key dict": lambda v: {codec.TAG: v},
}


@pytest.mark.parametrize("kind", list(_WRAPPERS))
def test_what_dumps_accepts_at_the_depth_limit_loads_reads_back(kind: str) -> None:
    """The encoder counts containers, the decoder JSON levels (several per tagged
    container): 150 nested int-key dicts were written, then refused by ``loads``.  The
    deepest leaves (a timedelta, a zoned datetime) are two more JSON levels."""
    for leaf in (dt.timedelta(days=1), dt.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))):
        value: Any = leaf
        for _ in range(codec.MAX_DEPTH):
            value = _WRAPPERS[kind](value)
        assert codec.loads(codec.dumps(value)) == value
        with pytest.raises(PayloadError, match=f"more than {codec.MAX_DEPTH} levels"):
            codec.dumps(_WRAPPERS[kind](value))


def test_a_time_keeps_its_zone() -> None:
    """A daily cut-off "09:00 Europe/Paris" came back naive: a time has no date, so its
    ISO text has no offset for a ZoneInfo."""
    value = dt.time(9, 0, fold=1, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    back = codec.loads(codec.dumps(value))
    assert back == value and back.tzinfo == value.tzinfo and back.fold == 1


class _NoOffset(dt.tzinfo):
    def utcoffset(self, _: dt.datetime | None) -> None:
        return None

    def dst(self, _: dt.datetime | None) -> None:
        return None

    def tzname(self, _: dt.datetime | None) -> str:
        return "local"


@pytest.mark.parametrize("value", [dt.time(9, tzinfo=_NoOffset()), dt.datetime(2024, 1, 1, tzinfo=_NoOffset())],
                         ids=["time", "datetime"])
def test_a_zone_without_an_offset_is_refused_not_dropped(value: Any) -> None:
    with pytest.raises(PayloadError, match=r"at \.cutoffs\[0\] has a tzinfo without a UTC offset"):
        codec.dumps({"cutoffs": [value]})


@given(st.dictionaries(st.one_of(hashables, str_keys), values, max_size=5))
@example({"b": {2: 1, 1: 2}, "a": 0})
def test_the_canonical_text_of_equal_dicts_is_one(value: dict[Any, Any]) -> None:
    """What an idempotent start hashes: the same for a dict built in another order."""
    reordered = {k: value[k] for k in reversed(value)}
    text = codec.canonical(codec.dumps(value))
    assert codec.canonical(codec.dumps(reordered)) == text
    assert len(codec.loads(text)) == len(value)


def test_zoned_datetimes_written_without_their_fold_still_read() -> None:
    """Payloads journaled before the fold was kept: the instant, shown in its zone."""
    text = json.dumps({codec.TAG: "zoned", "v": ["2024-03-01T12:00:00+01:00", "Europe/Paris"]})
    back = codec.loads(text)
    assert back == dt.datetime(2024, 3, 1, 11, tzinfo=dt.timezone.utc)
    assert back.tzinfo == zoneinfo.ZoneInfo("Europe/Paris") and back.hour == 12


def test_corrupted_payload_is_reported() -> None:
    with pytest.raises(PayloadError, match="unknown payload tag"):
        codec.loads('{"__cf__": "martian", "v": 1}')
    assert codec.loads(None) is None
    assert isinstance(codec.loads(codec.dumps(uuid.uuid4())), uuid.UUID)


@given(st.dictionaries(st.one_of(st.text(max_size=3), st.integers(-3, 12), st.binary(max_size=2), st.booleans(),
                                 st.none(), st.decimals(allow_nan=False, places=1, max_value=9, min_value=-9)),
                       st.integers(), max_size=8))
@example({1: "int key", "1": "str key", b"1": 3, "1 (int)": 4})
def test_the_readable_form_of_a_dict_keeps_every_entry(value: dict[Any, Any]) -> None:
    """``--json`` and ``chainflow show`` write dict keys as text: keys of different types
    with the same text (1 and "1") are told apart, never one dropped for the other."""
    shown = codec.readable(value)
    json.dumps(shown)
    assert len(shown) == len(value)
    assert {k: v for k, v in shown.items() if k in value} == {k: v for k, v in value.items() if isinstance(k, str)}
