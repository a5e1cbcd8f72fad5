"""``python -m chainflow``: the ``chainflow`` command, for environments without the
console script on PATH (a venv not activated, a container's bare interpreter)."""

from .cli import main

main()
