"""Log output of a chainflow process (``chainflow worker --log-format``): plain text
for a terminal, or one JSON object per line for a log pipeline (Loki, CloudWatch,
``jq``), where a lifecycle event's fields (``chainflow.events``) are top-level keys a
query can filter on: run_id, workflow, step, chain, tx_hash, status, error...

A traceback stays inside its record's one line (the ``exc`` key), so a collector
never splits one failure into twenty lines.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", **event fields, "exc"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if isinstance(event, dict):
            line.update(event)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def announce(message: str, level: int = logging.INFO) -> None:
    """``message`` through the handler ``configure`` installed, in its format whatever
    the level: a process's start lines (its database, the port it bound) are what an
    operator reads first, and a JSON log pipeline must get JSON for them too."""
    record = logging.makeLogRecord({"name": "chainflow.cli", "levelno": level, "levelname": logging.getLevelName(level),
                                    "msg": message})
    for handler in _installed():
        handler.handle(record)


def _installed() -> list[logging.Handler]:
    return [h for h in logging.getLogger("chainflow").handlers if h.get_name() == "chainflow"]


def configure(fmt: str = "text", level: str | int = "INFO", stream: TextIO | None = None) -> logging.Handler:
    """Send the ``chainflow`` loggers' records at ``level`` and above to ``stream``
    (stderr) in ``fmt``; replaces a handler an earlier call installed."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name("chainflow")
    root = logging.getLogger("chainflow")
    for old in _installed():
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    root.propagate = False  # not twice when the application also configures the root logger
    return handler
