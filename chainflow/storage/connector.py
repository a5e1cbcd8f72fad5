"""Turning a database URL into a ready, migrated SQLAlchemy engine.

SQLite gets WAL with ``synchronous=FULL`` by default: a step's result must survive a
power cut once the workflow moved past it.  ``NORMAL`` is available only as an explicit
opt-in (``?synchronous=NORMAL`` in the URL) for users who accept losing the last
commits on an OS crash.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from ..errors import ConfigurationError, DatabaseLockedError
from . import schema

ENV_URL = "CHAINFLOW_DATABASE_URL"
DEFAULT_URL = "sqlite:///chainflow.db"
_SYNC_MODES = {"FULL", "NORMAL", "EXTRA"}
# URL schemes chainflow runs on (synchronous drivers; "postgresql" means psycopg 3)
SUPPORTED_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2")


def resolve_url(url: str | None) -> str:
    """The URL given, else $CHAINFLOW_DATABASE_URL, else the default file.

    Only None falls back: an empty string is a mistake (an unset variable expanded
    into a config file), and quietly opening ./chainflow.db would hide it."""
    if url is None:
        url = os.environ.get(ENV_URL)
        if url is not None and not url.strip():
            raise ConfigurationError(f"${ENV_URL} is set but empty; unset it or give a database URL")
    elif not isinstance(url, str) or not url.strip():
        raise ConfigurationError(f"empty database URL {url!r}: give sqlite:///path.db or "
                                 "postgresql+psycopg://user@host/db (or None for $CHAINFLOW_DATABASE_URL)")
    return url or DEFAULT_URL


def shown(url: sa.URL | str) -> str:
    """A database URL as it may be printed: without its password, whether in the
    userinfo or as libpq's ``password`` query parameter."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "a malformed database URL"
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def create_engine(url: str | None = None, *, busy_timeout: float = 30.0) -> sa.Engine:
    """Build the engine; raises ConfigurationError naming the URL when it is malformed
    or names a driver chainflow does not run on."""
    text = resolve_url(url)
    try:
        parsed = make_url(text)
    except ArgumentError as exc:
        raise ConfigurationError(f"malformed database URL {text!r}: {exc}") from None
    if parsed.drivername not in SUPPORTED_SCHEMES:
        raise ConfigurationError(f"unsupported database URL scheme {parsed.drivername + '://'!r} in "
                                 f"{shown(parsed)!r}; supported: "
                                 + ", ".join(f"{scheme}://" for scheme in SUPPORTED_SCHEMES))
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, busy_timeout)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        return sa.create_engine(parsed, pool_size=10, max_overflow=20, pool_pre_ping=True)
    except (NoSuchModuleError, ArgumentError, ImportError) as exc:  # e.g. psycopg2 not installed
        raise ConfigurationError(f"unusable database URL {shown(parsed)!r}: {exc}") from None


@contextlib.contextmanager
def locked_as_error(engine: sa.Engine, busy_timeout: float) -> Iterator[None]:
    """Turn SQLite's "database is locked" (another process held the lock past the busy
    timeout) into a DatabaseLockedError naming the file and the timeout."""
    try:
        yield
    except sa.exc.OperationalError as exc:
        if engine.dialect.name == "sqlite" and "locked" in str(exc.orig):
            raise DatabaseLockedError(sqlite_file(engine.url), busy_timeout) from None
        raise


def is_local(url: sa.URL) -> bool:
    """Whether the database lives on this machine: a file, or a server reached over
    loopback or a unix socket.  A commit there takes well under a millisecond, cheap
    enough to make on the event loop (see ``committer``)."""
    if url.get_backend_name() == "sqlite":
        return True
    host = url.host or url.query.get("host")
    if isinstance(host, tuple):
        host = host[0] if host else None
    return not host or host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")


class _WriterConnection(sqlite3.Connection):
    """Writers of one process to one file queue on a lock instead of on SQLite's busy
    handler, which sleeps in millisecond steps on every conflict (other processes still
    meet it).  The lock is held from BEGIN IMMEDIATE until the COMMIT or ROLLBACK has
    returned, and waited for no longer than SQLite would wait: the busy timeout."""

    _writer: threading.Lock  # the file's (``_writer_of``), given when the connection opens
    _busy_timeout: float
    _holding = False

    def begin_write(self) -> None:
        if not self._writer.acquire(timeout=self._busy_timeout):
            raise sqlite3.OperationalError("database is locked")  # as SQLite says it
        self._holding = True
        try:
            self.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._writer.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._release()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._release()


_writers: dict[str, threading.Lock] = {}
_writers_lock = threading.Lock()


def sqlite_file(url: sa.URL) -> str:
    """The file a SQLite URL opens: its path, or the path of a ``file:`` URI
    (``?uri=true``), so that both spellings of one file are the same file here."""
    path = url.database or ""
    if str(url.query.get("uri", "")).lower() == "true" and path.startswith("file:"):
        return urllib.parse.unquote(urllib.parse.urlsplit(path).path)
    return path


def _writer_of(path: str) -> threading.Lock:
    """The one writers' lock of a database file in this process: writes to other files
    do not wait for it."""
    key = os.path.realpath(path)
    with _writers_lock:
        return _writers.setdefault(key, threading.Lock())


def _sqlite_engine(parsed: sa.URL, busy_timeout: float) -> sa.Engine:
    query = dict(parsed.query)
    sync = str(query.pop("synchronous", "FULL")).upper()
    if sync not in _SYNC_MODES:
        raise ConfigurationError(f"synchronous={sync!r} in the SQLite URL: use FULL, EXTRA or NORMAL")
    if not parsed.database or parsed.database == ":memory:":
        raise ConfigurationError(
            "an in-memory SQLite database cannot be shared by workers; give a file path "
            "(sqlite:///chainflow.db)"
        )
    engine = sa.create_engine(
        parsed.set(query=query),
        connect_args={"timeout": busy_timeout, "check_same_thread": False, "isolation_level": None,
                      "factory": _WriterConnection},
        poolclass=sa.pool.QueuePool,
        pool_size=4,
        max_overflow=8,
    )

    path = sqlite_file(parsed)
    writer = _writer_of(path)

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn._writer, dbapi_conn._busy_timeout = writer, busy_timeout
        cur = dbapi_conn.cursor()
        _switch_to_wal(cur, busy_timeout, path)
        cur.execute(f"PRAGMA synchronous={sync}")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cur.close()

    # pysqlite's own transaction handling is off (isolation_level=None); take the write
    # lock at BEGIN so two processes never deadlock upgrading a read lock.
    @sa.event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        # readers (status, journal) take no lock: in WAL mode they never block writers
        if conn.get_execution_options().get("readonly"):
            conn.exec_driver_sql("BEGIN")
            return
        dbapi = conn.connection.dbapi_connection
        assert isinstance(dbapi, _WriterConnection)
        try:
            dbapi.begin_write()
        except sqlite3.OperationalError as exc:
            # wrapped as SQLAlchemy wraps a statement's error, so a lock held past the
            # busy timeout reaches callers (committer, client, CLI) as the type they handle
            raise sa.exc.OperationalError("BEGIN IMMEDIATE", None, exc) from None

    return engine


def _switch_to_wal(cursor: sqlite3.Cursor, busy_timeout: float, path: str) -> None:
    """``journal_mode=WAL`` on a new connection, waiting out a concurrent switch.  Two
    processes starting on a new file both convert it; each holds a shared lock and needs
    an exclusive one, so SQLite answers one of them "database is locked" at once rather
    than call its busy handler (waiting could deadlock).  That one waits here and asks
    again, up to the busy timeout; by then the file is in WAL mode and nothing changes.

    SQLite answers the mode it is in, and refuses WAL without a word where it has no
    shared memory for the WAL index (a network file system, a VFS without locking).
    Running on in rollback-journal mode would make every reader block the writer, and
    a heartbeat wait behind a long read: refused here, before anything runs."""
    deadline = time.monotonic() + busy_timeout
    pause = 0.001
    while True:
        try:
            mode, = cursor.execute("PRAGMA journal_mode=WAL").fetchone()
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    if str(mode).lower() != "wal":
        raise ConfigurationError(
            f"SQLite kept {path!r} in journal_mode={mode} instead of switching it to WAL, which "
            "chainflow needs (readers must not block the writer); WAL needs shared memory beside "
            "the file, which network file systems and lock-less VFSes lack: put the database on a "
            "local disk, or use Postgres")


def migrate(engine: sa.Engine) -> int:
    """Apply pending migrations under a cross-process lock; returns the schema version."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7311741)")
        schema.schema_version.create(conn, checkfirst=True)
        current = conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar() or 0
        if current > schema.LATEST:
            raise ConfigurationError(
                f"database schema version {current} is newer than this chainflow ({schema.LATEST}); upgrade chainflow"
            )
        for version, step in schema.MIGRATIONS:
            if version > current:
                step(conn)
                conn.execute(schema.schema_version.insert().values(version=version, applied_at=time.time()))
                current = version
        return current
