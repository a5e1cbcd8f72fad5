"""Entry point of one repetition: ``python -m bench._child <benchmark> '<json spec>'``.

Runs in a fresh interpreter; prints ``BENCH_RESULT {json}`` on success.
"""

from __future__ import annotations

import importlib
import json
import sys

from . import BY_NAME
from .harness import emit_result


def main(argv: list[str]) -> int:
    name, spec = argv[0], json.loads(argv[1])
    module = importlib.import_module(BY_NAME[name].module)
    emit_result(module.child(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
