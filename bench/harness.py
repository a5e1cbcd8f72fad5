"""Shared plumbing for the benchmarks: fresh databases, child processes, stats, reports.

Every repetition of every figure runs in a fresh ``python -m bench._child`` process
against a fresh database, so no peer inherits a warm cache, a grown heap or a JIT'd
code path from another.  The child prints one ``BENCH_RESULT {json}`` line; anything
else it prints is kept only for error reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

RESULT_MARKER = "BENCH_RESULT "
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_ENV = "CHAINFLOW_BENCH_PG"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Options:
    """What the command line asked for; handed to every benchmark's ``run``."""

    quick: bool = False
    reps: int = 3
    only: set[str] | None = None  # peer names, None = all
    backends: tuple[str, ...] = ("sqlite", "postgres")
    pg_admin_url: str = DEFAULT_PG
    tmpdir: str | None = None
    timeout: float = 900.0
    profile_dir: str | None = None  # pyinstrument HTML per repetition (timings then inflated)

    def wants(self, peer: str) -> bool:
        return self.only is None or peer in self.only


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- statistics -------------------------------------------------------------------


@dataclasses.dataclass
class Figure:
    """The repetitions of one measurement (or why there are none)."""

    values: list[float] = dataclasses.field(default_factory=list)
    problem: str | None = None  # "not available: ...", "failed: ..."
    raw: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.values) and self.problem is None

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def cell(self, fmt: str = "{:,.0f}") -> str:
        if self.problem and not self.values:
            return self.problem
        if not self.values:
            return "—"
        text = fmt.format(self.median)
        if len(self.values) > 1:
            text += f" ({fmt.format(min(self.values))}–{fmt.format(max(self.values))})"
        if self.problem:
            text += f" [{self.problem}]"
        return text


def ratio(a: Figure, b: Figure) -> str:
    """Ratio of medians, a / b."""
    if not (a.ok and b.ok) or b.median == 0:
        return "—"
    return f"{a.median / b.median:.2f}×"


# --- fresh databases ----------------------------------------------------------------


def _libpq(url: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix):]
    return url


def pg_problem(admin_url: str) -> str | None:
    """None when the Postgres admin database answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(_libpq(admin_url), autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def pg_database_url(admin_url: str, dbname: str) -> str:
    """libpq-style URL (postgresql://...) of ``dbname`` on the admin URL's server."""
    from sqlalchemy.engine import make_url

    url = make_url(_libpq(admin_url)).set(drivername="postgresql", database=dbname)
    return url.render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_postgres(admin_url: str) -> Iterator[str]:
    """Create ``bench_<random>``, yield its postgresql:// URL, drop it (FORCE) afterwards."""
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(admin_url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_database_url(admin_url, name)
    finally:
        with psycopg.connect(_libpq(admin_url), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def fresh_sqlite_dir(base: str | None) -> Iterator[str]:
    """A fresh empty directory; the peer creates its database file inside it."""
    path = tempfile.mkdtemp(prefix="bench_", dir=base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(backend: str, opts: Options) -> Iterator[str]:
    """``sqlite`` -> an empty directory path; ``postgres`` -> a postgresql:// URL."""
    if backend == "sqlite":
        with fresh_sqlite_dir(opts.tmpdir) as path:
            yield path
    elif backend == "postgres":
        with fresh_postgres(opts.pg_admin_url) as url:
            yield url
    else:
        raise ValueError(f"unknown backend {backend!r}")


# --- child processes ----------------------------------------------------------------


def run_child(benchmark: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run ``python -m bench._child <benchmark> <spec>``; return its result dict.

    Never raises for a failing child: returns ``{"error": "..."}`` instead, so one
    broken peer costs one table cell, not the whole run.
    """
    cmd = [sys.executable, "-m", "bench._child", benchmark, json.dumps(spec)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONHASHSEED", "0")
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
    if proc.returncode != 0 or result is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        return {"error": f"exit {proc.returncode}", "detail": "\n".join(tail)}
    return result


def run_on_database(benchmark: str, spec: dict[str, Any], backend: str | None, opts: Options,
                    key: str = "target") -> dict[str, Any]:
    """``run_child`` on a fresh database of ``backend`` handed over as ``spec[key]``
    (None: no database).  A database that cannot be made (Postgres unreachable) is the
    child's error: one cell, not the whole run."""
    try:
        if backend is None:
            return run_child(benchmark, spec, opts.timeout)
        with fresh_database(backend, opts) as db:
            return run_child(benchmark, {**spec, key: db}, opts.timeout)
    except Exception as exc:  # noqa: BLE001 - reported as the child's error
        return {"error": f"{type(exc).__name__}: {exc}"}


def failed(result: dict[str, Any], figures: Iterable[Figure], where: str) -> bool:
    """Whether the child failed; if so, each of ``figures`` says so and the log shows
    the error with the child's last lines."""
    if "error" not in result:
        return False
    for fig in figures:
        fig.problem = f"failed: {result['error']}"
    log(f"  {where}: FAILED {result['error']}\n{result.get('detail', '')}")
    return True


def sized_figures(benchmark: str, size_key: str, sizes: list[int], opts: Options,
                  measures: dict[str, Callable[[dict[str, Any]], float]],
                  describe: Callable[[dict[str, Any]], str]) -> dict[tuple[int, str], Figure]:
    """Each repetition runs one fresh child per size (``{size_key: n}``); a figure per
    (size, measure).  A failed child marks its size's figures instead of aborting."""
    figs = {(n, m): Figure() for n in sizes for m in measures}
    for rep in range(1, opts.reps + 1):
        for n in sizes:
            result = run_child(benchmark, {size_key: n}, opts.timeout)
            if failed(result, (figs[(n, m)] for m in measures), f"rep {rep} {size_key}={n}"):
                continue
            for m, measure in measures.items():
                figs[(n, m)].values.append(measure(result))
            log(f"  rep {rep} {size_key}={n}: {describe(result)}")
    return figs


def emit_result(result: dict[str, Any]) -> None:
    """Child side: hand the result to the parent."""
    print(RESULT_MARKER + json.dumps(result), flush=True)


# --- environment description ------------------------------------------------------


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "chainflow"], check=False, cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
        rev = out.stdout.strip() or "unknown"
        return rev + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:  # noqa: BLE001
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _filesystem(path: str) -> str:
    try:
        best, fstype = "", "?"
        target = os.path.realpath(path)
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and target.startswith(parts[1]) and len(parts[1]) > len(best):
                best, fstype = parts[1], parts[2]
        return f"{fstype} (mounted at {best})" if best else "?"
    except OSError:
        return "?"


def _postgres_info(admin_url: str) -> dict[str, str]:
    try:
        import psycopg

        with psycopg.connect(_libpq(admin_url), autocommit=True, connect_timeout=3) as conn:
            info = {}
            for name in ("server_version", "fsync", "synchronous_commit", "wal_sync_method", "commit_delay",
                         "shared_buffers"):
                row = conn.execute(f"SHOW {name}").fetchone()
                info["server" if name == "server_version" else name] = str(row[0]) if row else "?"
            return info
    except Exception as exc:  # noqa: BLE001
        return {"server": f"unreachable ({type(exc).__name__})"}


def _loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "?"


def environment(opts: Options) -> dict[str, Any]:
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
        mem = f"{psutil.virtual_memory().total / 2**30:.1f} GiB"
    except ImportError:
        physical, mem = None, "?"
    tmp = opts.tmpdir or tempfile.gettempdir()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical" + (f", {physical} physical" if physical else ""),
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "sqlite_dir": f"{tmp} on {_filesystem(tmp)}",
        "load": _loadavg(),
        "versions": {
            "python": platform.python_version(),
            "chainflow": f"{_version('chainflow')} (git {_git_rev()})",
            "dbos": _version("dbos"),
            "sqlalchemy": _version("sqlalchemy"),
            "psycopg": _version("psycopg"),
            "sqlite": sqlite3.sqlite_version,
            "postgres": _postgres_info(opts.pg_admin_url).get("server", "?"),
        },
        "postgres": _postgres_info(opts.pg_admin_url),
    }


def environment_markdown(env: dict[str, Any], command: str) -> str:
    v = env["versions"]
    pg = env["postgres"]
    pg_settings = ", ".join(f"{k}={val}" for k, val in pg.items() if k != "server")
    lines = [
        f"- **Command:** `{command}`",
        f"- **Date:** {env['date']}",
        (f"- **Machine:** {env['cpu']}; {env['cores']} cores; {env['memory']} RAM; {env['os']}; "
         f"load average at start {env['load']}, at end {_loadavg()}"),
        f"- **SQLite files in:** {env['sqlite_dir']}",
        (f"- **Versions:** python {v['python']}, chainflow {v['chainflow']}, dbos {v['dbos']}, "
         f"sqlalchemy {v['sqlalchemy']}, psycopg {v['psycopg']}, sqlite {v['sqlite']}, "
         f"postgres {v['postgres']}"),
    ]
    if pg_settings:
        lines.append(f"- **Postgres settings:** {pg_settings} (server on the same machine, over 127.0.0.1)")
    return "\n".join(lines)


# --- RESULTS.md ---------------------------------------------------------------------

HEADER = """# Benchmark results

Generated by `python -m bench` (see [README.md](README.md) for what each figure
measures and how).  Do not edit by hand: the next run rewrites this file.  Each
benchmark section is replaced as a whole when that benchmark is re-run on its own
(`python -m bench engine`), and carries the command and environment it was run with.

Figures are the **median (min–max)** over the repetitions; ratios compare medians.
"""


NOTES_MARKER = "<!-- bench:notes -->"


def _marker(name: str, edge: str) -> str:
    return f"<!-- bench:{name}:{edge} -->"


def write_results(path: Path, sections: dict[str, str], order: list[str], *, replace_all: bool) -> None:
    """Write ``sections`` into ``path``; keep other benchmarks' sections unless replace_all."""
    existing: dict[str, str] = {}
    notes = ""
    if path.exists() and NOTES_MARKER in path.read_text():
        # hand-written analysis below the marker survives every rewrite
        notes = NOTES_MARKER + path.read_text().split(NOTES_MARKER, 1)[1]
    if not replace_all and path.exists():
        text = path.read_text()
        for name in order:
            start, end = _marker(name, "start"), _marker(name, "end")
            if start in text and end in text:
                existing[name] = text.split(start, 1)[1].split(end, 1)[0].strip("\n")
    existing.update(sections)
    parts = [HEADER]
    for name in order:
        if name in existing:
            parts.append(f"{_marker(name, 'start')}\n{existing[name]}\n{_marker(name, 'end')}\n")
    if notes:
        parts.append(notes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
