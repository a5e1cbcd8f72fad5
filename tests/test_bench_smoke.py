"""Smoke test of the benchmark harness: ``python -m bench ... --quick`` end to end.

Tiny sizes, one repetition, results to a temp file (never bench/RESULTS.md).  Timings
are never asserted; only that every available peer ran and the report has its table.
Peers whose package is missing (dbos without the ``bench`` extra) show up as "not
available" and Postgres rows as "skipped" when the server is unreachable; neither fails
the test.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick(tmp_path: Path, *benchmarks: str) -> str:
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *benchmarks, "--quick", "--out", str(out), "--tmpdir", str(tmp_path)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out.read_text()


def test_bench_engine_quick(tmp_path: Path) -> None:
    text = quick(tmp_path, "engine")
    assert "| workload | mode | floor steps/s |" in text
    assert "| 6×3 | sequential |" in text
    assert "| 6×3 | 32 in flight |" in text
    assert "**Versions:**" in text and "**Command:**" in text
    assert "failed:" not in text, text


def test_bench_tracker_and_memory_quick(tmp_path: Path) -> None:
    text = quick(tmp_path, "tracker", "memory")
    assert "| pending tracked txs | JSON-RPC requests per head |" in text
    assert "| 200 | 3 |" in text  # the head's own transaction hashes need no extra call
    assert "| parked runs | worker RSS MB |" in text
    assert "failed:" not in text, text


def test_bench_seams_quick(tmp_path: Path) -> None:
    text = quick(tmp_path, "seams")
    assert "| seam | ours | µs/op (wall) | alternative |" in text
    for row in ("| threads | ThreadPool.run |", "| offload | threads.offload |", "| flag | Flag |",
                "| eager | eager.start |", "| rpc | Rpc (aiohttp) |"):
        assert row in text
    assert "failed:" not in text, text
