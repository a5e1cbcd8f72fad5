"""Shared fixtures: a database per test on SQLite *and* Postgres, app factories, call logs.

Postgres: every test gets a fresh database (``CREATE DATABASE cf_test_<random>``) on the
server named by ``CHAINFLOW_TEST_PG`` (default ``postgresql://postgres@127.0.0.1:5432/test``),
dropped at teardown.  When the server is unreachable the Postgres half of each test is
skipped with a message, except under ``CI=true`` where it fails: CI must never go green
by silently testing one backend.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

# Imported up front on purpose: otherwise hypothesis' pytest plugin imports it lazily in
# the terminal summary, deep in pytest's stack, and CPython 3.11.7's parser then fails
# the assertion-rewrite compile with "AST constructor recursion depth mismatch".
import hypothesis  # noqa: F401
import pytest

from chainflow.testing import CallLog

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from devnet import RegtestNode

ADMIN_URL = os.environ.get("CHAINFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

_pg_state: dict[str, Any] = {}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _admin_conninfo() -> str:
    # psycopg wants a libpq URL, not a SQLAlchemy one
    return ADMIN_URL.replace("postgresql+psycopg://", "postgresql://").replace("postgresql+psycopg2://", "postgresql://")


def _pg_connect() -> Any:
    import psycopg

    return psycopg.connect(_admin_conninfo(), autocommit=True, connect_timeout=3)


def postgres_problem() -> str | None:
    """None when the admin database is reachable, else why not (cached per session)."""
    if "problem" not in _pg_state:
        try:
            with _pg_connect() as conn:
                conn.execute("SELECT 1")
            _pg_state["problem"] = None
        except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
            _pg_state["problem"] = f"{type(exc).__name__}: {exc}".strip()
    return _pg_state["problem"]


def unavailable(message: str, local_hint: str = "") -> NoReturn:
    """A test's service or binary is missing: skip locally, fail under CI=true (never a
    silent skip there)."""
    if in_ci():
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(f"{message}; {local_hint}" if local_hint else message)


def require_postgres() -> None:
    problem = postgres_problem()
    if problem is not None:
        unavailable(f"PostgreSQL at {ADMIN_URL} is unreachable ({problem})",
                    "set CHAINFLOW_TEST_PG or start Postgres to run the Postgres half")


def _sqlalchemy_url(dbname: str) -> str:
    from sqlalchemy.engine import make_url

    url = make_url(ADMIN_URL).set(drivername="postgresql+psycopg", database=dbname)
    return url.render_as_string(hide_password=False)


def create_pg_database() -> tuple[str, Callable[[], None]]:
    """A fresh, empty database; returns (SQLAlchemy URL, drop function)."""
    require_postgres()
    name = f"cf_test_{uuid.uuid4().hex[:16]}"
    with _pg_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with _pg_connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return _sqlalchemy_url(name), drop


def _make_url(backend: str, tmp_path: Path) -> tuple[str, Callable[[], None]]:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'chainflow.db'}", lambda: None
    return create_pg_database()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL; every storage test runs once per backend."""
    url, drop = _make_url(backend, tmp_path)
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    """Postgres only (race tests)."""
    url, drop = _make_url("postgres", tmp_path)
    try:
        yield url
    finally:
        drop()


@pytest.fixture
def make_app(db_url: str) -> Iterator[Callable[..., Any]]:
    """``make_app(**kwargs)`` -> a Chainflow on this test's database; a second call is a
    second, independent app (as another process would have), sharing the database."""
    import chainflow as cf

    apps: list[cf.Chainflow] = []

    def make(**kwargs: Any) -> cf.Chainflow:
        app = cf.Chainflow(db_url, **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.engine.dispose()




@pytest.fixture
def calls(tmp_path: Path) -> CallLog:
    return CallLog(tmp_path / "calls.log")


# --- devnets ------------------------------------------------------------------------


def require_anvil() -> None:
    """Skip when the anvil binary is missing, or fail when CI=true (never a silent skip)."""
    from devnet import AnvilNotInstalled, anvil_binary

    try:
        anvil_binary()
    except AnvilNotInstalled as exc:
        unavailable(str(exc))


def require_regtest() -> None:
    """Skip when no bitcoind/litecoind is installed, or fail when CI=true (never a silent skip)."""
    from devnet import RegtestNotInstalled
    from devnet.regtest import require_node_binary

    try:
        require_node_binary()
    except RegtestNotInstalled as exc:
        unavailable(str(exc))


@pytest.fixture
def regtest_node() -> Iterator[RegtestNode]:
    """A started regtest node of its own (about 0.6 s to start with a funded wallet at
    height 110, 0.1 s to stop), so a test may reorg or mine freely."""
    require_regtest()
    from devnet import RegtestNode

    with RegtestNode() as node:
        yield node


@pytest.fixture(params=[pytest.param("inprocess"), pytest.param("anvil", marks=pytest.mark.anvil)])
def node_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "anvil":
        require_anvil()
    return str(request.param)


@pytest.fixture
def make_net(node_kind: str) -> Iterator[Callable[..., Any]]:
    """Factory for a started devnet of this test's kind, stopped at teardown."""
    from devnet import Anvil, InProcessEVM

    started: list[Any] = []

    def make(**options: Any) -> Any:
        if node_kind == "anvil":
            options.pop("finality_depth", None)  # anvil's tags trail by fixed depths
        net = Anvil(**options) if node_kind == "anvil" else InProcessEVM(**options)
        net.__enter__()
        started.append(net)
        return net

    yield make
    for net in started:
        net.stop()


@pytest.fixture
def net(make_net: Callable[..., Any]) -> Any:
    return make_net()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """The spans chainflow finishes during the test, in memory (the test extra
    installs the SDK)."""
    from opentelemetry.sdk import trace as sdk_trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from chainflow import tracing

    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.configure(provider)
    yield exporter
    tracing.configure(None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Engine tests are short: a hang (a lost wake-up, a park nobody resolves) should
    fail in seconds, not at the global 600s timeout.  Slow tests set their own."""
    here = Path(__file__).parent / "engine"
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here) and item.get_closest_marker("timeout") is None \
                and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.timeout(60))

