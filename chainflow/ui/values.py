"""Decoded payloads as HTML, exact: an integer shows every digit (a wei amount beyond
2**53 is not rounded as a JSON viewer in the browser would), a Decimal its exact text,
bytes their hex; each non-JSON type is labelled so ``1`` and ``Decimal('1')`` differ.

Everything user-controlled is escaped by ``Markup.format``; the result is ``Markup`` so the
templates do not escape it twice."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from markupsafe import Markup

# a payload is shown whole on a run's page, but not a megabyte of it
MAX_ITEMS = 200
MAX_TEXT = 2_000
MAX_BYTES = 512


def render(value: Any) -> Markup:
    return Markup("<span class=\"val\">") + _render(value, 0) + Markup("</span>")


def _typed(kind: str, text: str) -> Markup:
    return Markup('<span class="v-{0}" title="{0}">{1}</span>').format(kind, text)


def _render(value: Any, depth: int) -> Markup:
    if value is None:
        return _typed("null", "null")
    if isinstance(value, bool):
        return _typed("bool", "true" if value else "false")
    if isinstance(value, int):
        return _typed("int", str(value))
    if isinstance(value, float):
        return _typed("float", repr(value))
    if isinstance(value, decimal.Decimal):
        return _typed("decimal", f"Decimal {value}")
    if isinstance(value, str):
        return _typed("str", _clip('"' + value + '"', MAX_TEXT))
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        shown = "0x" + raw[:MAX_BYTES].hex() + ("…" if len(raw) > MAX_BYTES else "")
        return _typed("bytes", f"{shown} ({len(raw)} bytes)")
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return _typed("time", value.isoformat())
    if isinstance(value, dt.timedelta):
        return _typed("time", f"timedelta {value}")
    if isinstance(value, uuid.UUID):
        return _typed("uuid", str(value))
    if isinstance(value, dict):
        items = [Markup("{0}: {1}").format(_render(k, depth + 1), _render(v, depth + 1))
                 for k, v in list(value.items())[:MAX_ITEMS]]
        return _container("{", "}", items, len(value))
    if isinstance(value, (list, tuple, set, frozenset)):
        kind = {list: "", tuple: "tuple ", set: "set ", frozenset: "frozenset "}.get(type(value), "")
        items = [_render(v, depth + 1) for v in list(value)[:MAX_ITEMS]]
        return (_typed("kind", kind) if kind else Markup("")) + _container("[", "]", items, len(value))
    return _typed("other", _clip(repr(value), MAX_TEXT))


def _container(open_: str, close: str, items: list[Markup], total: int) -> Markup:
    more = Markup(', <span class="v-more">… {0} more</span>').format(total - len(items)) if total > len(items) else ""
    return Markup(open_) + Markup(", ").join(items) + more + Markup(close)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error(err: dict[str, Any] | None) -> Markup:
    """A journaled error: its type and message (the traceback stays in the database)."""
    if not err:
        return Markup("")
    kind = str(err.get("type", "Error")).removeprefix("builtins.")
    message = str(err.get("message", ""))
    return Markup('<span class="err">{0}: {1}</span>').format(kind, _clip(message, MAX_TEXT))
