"""mypy over chainflow/, adapters/, devnet/, bench/, examples/ and tests/ (pyproject's [tool.mypy])
as part of the suite, so `.ci/run` fails on a type error like on any other broken test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_is_clean() -> None:
    # the venv's own interpreter, so the mypy and the stubs checked against are the installed ones;
    # the incremental cache (.mypy_cache, git-ignored) keeps reruns to a few seconds
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-color-output", "--no-error-summary"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
