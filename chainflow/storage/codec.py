"""Exact JSON encoding of step inputs and outputs.

Payment workflows carry wei amounts beyond 2**64, Decimal prices and raw tx bytes;
plain ``json`` would either refuse them or silently turn them into floats.  Values
are stored as JSON text (identical on SQLite and Postgres) with a small tagged form
for the types JSON lacks.  A dict that happens to use the tag key is escaped, so any
supported value round-trips, which the property tests check.

Two limits keep hostile or accidental input from surfacing as an interpreter error
(a ``RecursionError`` with a 3,000-line traceback, an anonymous ``ValueError``): values
nest at most ``MAX_DEPTH`` containers deep, and integers have at most
``sys.get_int_max_str_digits()`` digits (4,300 by default), the most Python turns
into text.  Both are ``PayloadError``s naming the limit.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import re
import sys
import uuid
import zoneinfo
from typing import Any

from ..errors import PayloadError, type_name

TAG = "__cf__"
_SAFE_INT = 2**53  # beyond this many JSON readers (JS, some drivers) lose precision
# nested containers a value may have: the encoder recurses twice per level and the
# tagged form nests up to three times as deep, both well inside Python's recursion limit
MAX_DEPTH = 200
# JSON levels of the deepest text the encoder writes, which ``loads`` must read back:
# a tagged map ({"__cf__": "map", "v": [[k, v]]}) puts its values three levels down,
# and a tagged leaf in a list (a timedelta, a zoned datetime) is two more
_JSON_DEPTH = 3 * MAX_DEPTH + 2


# Where a value sits, for errors only: None at the top, else (parent, step) with a
# step a str key of a dict, an int index of a list or tuple, or (key,) in a map.
# Rendered only when something is refused: formatting it for every value cost a
# quarter of encoding a transaction receipt.
Path = tuple[Any, Any] | None
_AS_IS = frozenset({str, bool, type(None)})  # encoded as themselves, without a call


def _where(path: Path) -> str:
    parts = []
    while path is not None:
        path, step = path
        parts.append(f".{step}" if type(step) is str else f"[{step[0]!r}]" if type(step) is tuple else f"[{step}]")
    return "".join(reversed(parts)) or "top level"


def _too_deep(path: Path) -> PayloadError:
    return PayloadError(f"value nested more than {MAX_DEPTH} levels deep at {_where(path)} "
                        f"(chainflow.storage.codec.MAX_DEPTH)")


def _too_long(what: str) -> PayloadError:
    return PayloadError(f"{what} has more than {sys.get_int_max_str_digits()} digits, the most Python "
                        "converts to text (sys.get_int_max_str_digits())")


def _encode(value: Any, path: Path, depth: int = 0) -> Any:
    # bool before int: bool is an int subclass
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        if -_SAFE_INT < value < _SAFE_INT:
            return value
        try:
            return {TAG: "int", "v": str(value)}
        except ValueError:
            raise _too_long(f"integer at {_where(path)}") from None
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return {TAG: "float", "v": repr(value)}
        return value
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise _too_deep(path)
        depth += 1
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: v if type(v) in _AS_IS else _encode(v, (path, k), depth) for k, v in value.items()}
        return {TAG: "map", "v": [[_encode(k, path, depth), _encode(v, (path, (k,)), depth)]
                                  for k, v in value.items()]}
    if isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise _too_deep(path)
        return [v if type(v) in _AS_IS else _encode(v, (path, i), depth + 1) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        if depth >= MAX_DEPTH:
            raise _too_deep(path)
        return {TAG: "tuple", "v": [_encode(v, (path, i), depth + 1) for i, v in enumerate(value)]}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {TAG: "bytes", "v": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, decimal.Decimal):
        return {TAG: "dec", "v": str(value)}
    if isinstance(value, (dt.datetime, dt.time)):  # before date: a datetime is one
        is_time = isinstance(value, dt.time)
        zone = getattr(value.tzinfo, "key", None)  # a ZoneInfo: keep the zone, not just the offset
        if isinstance(zone, str):
            # the wall time and fold as given: converting from the offset would move a
            # time in a DST gap (which has no instant of its own) to the other side; a
            # time has no date, hence no offset in its text at all
            return {TAG: "zoned_time" if is_time else "zoned", "v": [value.isoformat(), zone, value.fold]}
        if value.tzinfo is not None and value.utcoffset() is None:  # its text would be naive
            raise PayloadError(f"{type(value).__name__} at {_where(path)} has a tzinfo without a UTC offset "
                               f"({value.tzinfo!r}) and cannot be stored exactly (use a zoneinfo.ZoneInfo "
                               "or a fixed datetime.timezone)")
        return {TAG: "time" if is_time else "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, uuid.UUID):
        return {TAG: "uuid", "v": str(value)}
    if isinstance(value, (set, frozenset)):
        if depth >= MAX_DEPTH:
            raise _too_deep(path)
        kind = "set" if isinstance(value, set) else "frozenset"
        items = sorted((_encode(v, path, depth + 1) for v in value), key=lambda e: json.dumps(e, sort_keys=True))
        return {TAG: kind, "v": items}
    raise PayloadError(
        f"value of type {type_name(value)} at {_where(path)} "
        "cannot be stored exactly (supported: None, bool, int, float, str, bytes, Decimal, "
        "datetime/date/time/timedelta, UUID, list, tuple, set, dict)"
    )


def _zoned(text: str, zone: str, fold: int | None = None) -> dt.datetime:
    if fold is None:  # written before chainflow kept the fold: the instant, in its zone
        return dt.datetime.fromisoformat(text).astimezone(zoneinfo.ZoneInfo(zone))
    return dt.datetime.fromisoformat(text).replace(tzinfo=zoneinfo.ZoneInfo(zone), fold=fold)


def _zoned_time(text: str, zone: str, fold: int) -> dt.time:
    return dt.time.fromisoformat(text).replace(tzinfo=zoneinfo.ZoneInfo(zone), fold=fold)


_DECODERS: dict[str, Any] = {
    "int": int,
    "float": float,
    "tuple": lambda v: tuple(v),
    "bytes": lambda v: base64.b64decode(v.encode("ascii")),
    "dec": decimal.Decimal,
    "datetime": dt.datetime.fromisoformat,
    "zoned": lambda v: _zoned(*v),
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "zoned_time": lambda v: _zoned_time(*v),
    "timedelta": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "uuid": uuid.UUID,
    "set": set,
    "frozenset": frozenset,
}


def _hook(obj: dict[str, Any]) -> Any:
    tag = obj.get(TAG)
    if tag is None:
        return obj
    if tag == "map":
        return {_freeze(k): v for k, v in obj["v"]}
    try:
        return _DECODERS[tag](obj["v"])
    except KeyError as exc:
        raise PayloadError(f"unknown payload tag {tag!r}") from exc
    except ValueError as exc:
        if tag == "int":
            raise _too_long("stored integer") from None
        raise PayloadError(f"broken {tag!r} payload: {exc}") from None


def _freeze(key: Any) -> Any:
    # map keys decoded from JSON arrays come back as lists; tuples were tagged, so a
    # list key can only be a corrupted payload.
    if isinstance(key, list):
        raise PayloadError("map key decoded as a list: corrupted payload")
    return key


# built once: json.dumps/json.loads with options build a new encoder/decoder per call,
# which costs more than coding a small payload (every step codes its output twice)
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder(object_hook=_hook)
# immutable values that decode to an equal value of the same type
_PLAIN = (type(None), bool, str, float)


def plain(value: Any) -> Any:
    """``value`` in the tagged plain-data form ``dumps`` writes as text: for reports
    that embed exact values in a JSON document of their own."""
    return _encode(value, None)


def readable(value: Any) -> Any:
    """A decoded value as plain JSON data for people and scripts (``chainflow show``,
    ``--json``), without the tagged form: integers stay exact JSON numbers of any size,
    a Decimal is its digits as a string (a float would round it), bytes are 0x-hex,
    times ISO 8601, a timedelta its seconds, tuples and sets lists, and a dict's
    non-string keys their text (with their type when another key has that text).  One
    way: the types are no longer told apart."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else repr(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {k: readable(v) for k, v in value.items() if isinstance(k, str)}
        for k, v in value.items():
            if not isinstance(k, str):
                text = readable(k)
                text = text if isinstance(text, str) else json.dumps(text)
                while text in out:  # a key whose text another key has (1 and "1") says its type
                    text = f"{text} ({type(k).__name__})"
                out[text] = readable(v)
        return out
    if isinstance(value, (list, tuple)):
        return [readable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((readable(v) for v in value), key=lambda e: json.dumps(e, sort_keys=True))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "0x" + bytes(value).hex()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return repr(value)


def dumps(value: Any, *, what: str = "") -> str:
    """Encode ``value``; ``what`` names the payload in the error (e.g. "output of step 'x'")."""
    # the commonest step outputs written as the encoder would, without the encoder
    # object it builds per call for anything but a str (most of a scalar's cost)
    kind = type(value)
    if kind is int and -_SAFE_INT < value < _SAFE_INT:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    try:
        return _ENCODER.encode(_encode(value, None))
    except PayloadError as exc:
        raise PayloadError(f"{what}: {exc}" if what else str(exc)) from None


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _check_nesting(text: str, levels: int) -> None:
    """Refuse JSON text nested deeper than ``levels`` before the decoder sees it.

    The C decoder recurses once per level and relies on the recursion limit to stop;
    py-evm (imported by the EVM devnet) raises that limit to 100,000, and a deep text
    then overflows the C stack: a segfault, not a ``RecursionError``.  Text with few
    openings cannot nest deep, so the common payload pays two ``str.count``s; others
    lose their strings and non-bracket characters (C speed) and shed one innermost
    level per pass."""
    if text.count("[") + text.count("{") <= levels:
        return
    skeleton = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(levels):
        shorter = skeleton.replace("[]", "").replace("{}", "")
        if shorter == skeleton:
            break
        skeleton = shorter
    # left over: deeper than the limit, or brackets that never close (malformed text
    # whose decoding would recurse as deep before failing)
    if len(skeleton) > levels:
        raise _too_deep(None)


def loads(text: str | None) -> Any:
    if text is None:
        return None
    _check_nesting(text, _JSON_DEPTH)
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise _too_deep(None) from None


def _sorted_map(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if obj.get(TAG) == "map":  # a user dict with the tag key is itself a map: this is one
        obj["v"] = sorted(obj["v"], key=lambda entry: _CANONICAL_ENCODER.encode(entry[0]))
    return obj


_CANONICAL_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, sort_keys=True)
# called innermost object first by the C decoder: no Python recursion, however deep the text
_CANONICAL_DECODER = json.JSONDecoder(object_pairs_hook=_sorted_map)


def canonical(text: str) -> str:
    """``text`` as ``dumps`` wrote it, with every dict's entries in one order: equal
    values have the same canonical text whatever order their dicts' keys were added in
    (a retried request re-serialised), which the text itself keeps."""
    if "{" not in text:
        return text
    _check_nesting(text, _JSON_DEPTH)
    return _CANONICAL_ENCODER.encode(_CANONICAL_DECODER.decode(text))


def parse_json(text: str, *, what: str) -> Any:
    """Plain JSON from outside (a CLI option), its nesting and integers refused as
    ``PayloadError``s naming the limit; a syntax error stays a ``json.JSONDecodeError``."""
    try:
        _check_nesting(text, MAX_DEPTH)  # untagged: a JSON level is a container
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except PayloadError as exc:
        raise PayloadError(f"{what}: {exc}") from None
    except RecursionError:
        raise PayloadError(f"{what}: {_too_deep(None)}") from None
    except ValueError:  # only the int-to-text limit raises a plain ValueError here
        raise PayloadError(f"{what}: {_too_long('an integer')}") from None


def roundtrip(value: Any, *, what: str = "") -> tuple[str, Any]:
    """Encoded text plus the value as a replay would see it.

    Workflow code is always handed the decoded copy, even on first execution, so a run
    behaves the same whether a value came fresh from a step or from the journal.  An
    immutable scalar is its own decoded copy.
    """
    text = dumps(value, what=what)
    if type(value) in _PLAIN or (type(value) is int and -_SAFE_INT < value < _SAFE_INT):
        return text, value
    return text, loads(text)
