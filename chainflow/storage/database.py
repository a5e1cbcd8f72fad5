"""``Database``: the one way into the database outside the group commit.

Every layer that reads or writes tables (the client, the worker's claims and
heartbeats, the submission protocol, the tracker, the CLI) hands a function of a
connection to ``tx`` or ``read`` here, and the schema check, the lock-wait error and
the thread hand-off live in one place instead of one copy per layer.  The SQL itself
stays in the stores (``store`` for runs, ``chain.chainstore`` for the chain); this object
only decides how a transaction is opened.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa

from ..errors import ConfigurationError
from ..threads import offload
from .connector import create_engine, locked_as_error, migrate, shown

T = TypeVar("T")


class Database:
    def __init__(self, url: str, *, busy_timeout: float) -> None:
        self.url = url
        self.busy_timeout = busy_timeout
        self.engine = create_engine(url, busy_timeout=busy_timeout)
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def ensure_schema(self) -> None:
        """Create or migrate the schema once per process (a flag check afterwards)."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                try:
                    with locked_as_error(self.engine, self.busy_timeout):
                        migrate(self.engine)
                except sa.exc.OperationalError as exc:
                    raise ConfigurationError(
                        f"cannot reach database {shown(self.engine.url)}: "
                        f"{exc.orig}"
                    ) from None
                self._schema_ready = True

    def tx(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in one transaction."""
        self.ensure_schema()
        with locked_as_error(self.engine, self.busy_timeout), self.engine.begin() as conn:
            return fn(conn, *args)

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(conn, *args)`` in one read-only transaction."""
        self.ensure_schema()
        with locked_as_error(self.engine, self.busy_timeout), \
                self.engine.connect().execution_options(readonly=True) as conn, conn.begin():
            return fn(conn, *args)

    async def atx(self, fn: Callable[..., T], *args: Any) -> T:
        """``tx`` off the event loop."""
        return await offload(self.tx, fn, *args)

    async def aread(self, fn: Callable[..., T], *args: Any) -> T:
        """``read`` off the event loop."""
        return await offload(self.read, fn, *args)

    def dispose(self) -> None:
        self.engine.dispose()
