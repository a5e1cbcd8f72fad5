"""chainflow's benchmark harness: ``python -m bench all`` (see bench/README.md).

Each benchmark is a module in this package registered in ``BENCHMARKS`` below.  A
benchmark module provides:

``TITLE``
    one line for the report.
``available() -> str | None``
    None when it can run here, else the reason it cannot (e.g. a missing binary).
``run(opts: harness.Options, command: str) -> str``
    runs every repetition (each in a fresh subprocess on a fresh database) and
    returns the Markdown section for bench/RESULTS.md.
``child(spec: dict) -> dict``
    executed inside the fresh subprocess (``python -m bench._child <name> <spec>``):
    does one repetition of one figure and returns its measurements.

``python -m bench all`` runs every registered benchmark whose module imports and whose
``available()`` says yes; the others get a "not available" line in the report.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str  # importable module path
    summary: str


BENCHMARKS: list[Benchmark] = [
    Benchmark("engine", "bench.engine", "engine overhead: N workflows x K no-op steps, steps/s vs a floor and DBOS"),
    Benchmark("onchain", "bench.onchain", "on-chain throughput on anvil"),
    Benchmark("tracker", "bench.tracker", "tracker scale"),
    Benchmark("memory", "bench.memory", "memory of 10k parked runs"),
    Benchmark("seams", "bench.seams", "hand-written pieces (threads, flag, eager, JSON-RPC client) vs their alternatives"),
    Benchmark("replay", "bench.replay", "replay sweep: 10,000 recorded 5-step runs, one step overridden"),
    Benchmark("btc_payouts", "bench.btc_payouts",
              "Bitcoin payouts on regtest: chainflow batched/unbatched vs sendtoaddress, RPC per block"),
    Benchmark("ui_pages", "bench.ui_pages", "dashboard pages over 1,000,000 runs: server time per page"),
]

BY_NAME = {b.name: b for b in BENCHMARKS}


def load(bench: Benchmark) -> tuple[ModuleType | None, str | None]:
    """(module, None) when the benchmark can run, else (module or None, reason)."""
    try:
        module = importlib.import_module(bench.module)
    except ModuleNotFoundError as exc:
        if exc.name == bench.module:
            return None, "not written yet"
        return None, f"cannot import: {exc}"
    except Exception as exc:  # noqa: BLE001 - a broken module must not stop the others
        return None, f"cannot import: {type(exc).__name__}: {exc}"
    check = getattr(module, "available", None)
    reason = check() if callable(check) else None
    return module, reason
