"""Query parameters, checked before anything is read: a bad one is a 400 page naming
the parameter and what it accepts, never a stack trace or a silently ignored filter."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping

from ..storage import limits

# the spans a window or a "since" accepts, in seconds
SPANS = {"15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800}
_RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class BadRequest(Exception):
    """A request the dashboard refuses: ``status`` is the HTTP status of its page."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Query:
    """The query string of one request, read one named parameter at a time; an empty
    value counts as absent (what an untouched form field sends)."""

    def __init__(self, params: Mapping[str, str], allowed: Iterable[str]) -> None:
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise BadRequest(f"unknown query parameter {unknown[0]!r} (this page takes: {', '.join(allowed)})")
        self.params = {k: v for k, v in params.items() if v.strip()}

    def text(self, name: str, max_length: int = limits.WORKFLOW_NAME_LENGTH) -> str | None:
        value = self.params.get(name)
        if value is not None and len(value) > max_length:
            raise BadRequest(f"{name} is longer than {max_length} characters")
        return value

    def choice(self, name: str, choices: Iterable[str]) -> str | None:
        value = self.params.get(name)
        options = list(choices)
        if value is not None and value not in options:
            raise BadRequest(f"{name} must be one of {', '.join(options)}; got {value!r}")
        return value

    def integer(self, name: str, low: int, high: int) -> int | None:
        value = self.params.get(name)
        if value is None:
            return None
        try:
            number = int(value)
        except ValueError:
            raise BadRequest(f"{name} must be a whole number; got {value!r}") from None
        if not low <= number <= high:
            raise BadRequest(f"{name} must be between {low} and {high}; got {number}")
        return number

    def time(self, name: str) -> float | None:
        """An ISO 8601 time (a ``datetime-local`` field sends one without a zone: UTC,
        as every time the dashboard shows) as epoch seconds."""
        value = self.params.get(name)
        if value is None:
            return None
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            raise BadRequest(f"{name} must be an ISO time like 2026-01-31T12:00 (UTC); got {value!r}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        return when.timestamp()

    def cursor(self, name: str) -> tuple[float, str] | None:
        """A runs page's keyset cursor: ``<created_at>_<run id>`` of the last run shown."""
        value = self.params.get(name)
        if value is None:
            return None
        stamp, _, run_id = value.partition("_")
        try:
            created = float(stamp)
        except ValueError:
            created = float("nan")
        if created != created or not _RUN_ID.match(run_id):
            raise BadRequest(f"{name} is not a page cursor of this dashboard; got {value!r}")
        return created, run_id


def cursor_of(created_at: float, run_id: str) -> str:
    return f"{created_at!r}_{run_id}"


def run_id(value: str) -> str:
    """A run id in a path: refused early when it cannot be one (a typo is a 404 page
    either way, but this one names what is wrong)."""
    if not _RUN_ID.match(value):
        raise BadRequest(f"{value!r} is not a run id (a UUID like 0b3c…-…)", 404)
    return value
