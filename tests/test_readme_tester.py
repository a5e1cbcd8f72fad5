"""The README's ``WorkflowTester`` example, run as written (only its database file moved
into the test's directory): the README must not promise what the tester cannot do."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "WorkflowTester(app)" in b]
    return block


async def test_the_readme_workflow_tester_example_runs(tmp_path: Path) -> None:
    code = readme_example().replace("sqlite:///approvals-test.db", f"sqlite:///{tmp_path / 'approvals.db'}")
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    try:
        await namespace["test_an_approved_transfer_is_sent"]()
    finally:
        namespace["app"].engine.dispose()
