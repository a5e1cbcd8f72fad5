"""The group commit's driver path (``storage.entrywriter``) gives the same answers
whatever the batch's shape: on Postgres a part with one record travels as plain
parameters and one with several as a JSON record set, so each mix of one and several
is its own statement."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.states import RunState
from chainflow.storage import store
from chainflow.storage.entrywriter import EntryWriter
from chainflow.storage.schema import journal, runs


def _entry(run_id: str, key: str) -> dict[str, Any]:
    return dict(run_id=run_id, branch="", position=0, key=key, kind="step", status="ok", output=f'"{key}"',
                error=None, attempts=1, started_at=1.5, finished_at=2.25)


@pytest.mark.parametrize("sizes", list(itertools.product((0, 1, 2), repeat=3)),
                         ids=lambda s: "new{}-rows{}-finishes{}".format(*s))
def test_every_mix_of_one_and_several_records(make_app: Any, sizes: tuple[int, int, int]) -> None:
    new, rows, finishes = sizes
    app: cf.Chainflow = make_app()

    @app.workflow("w")
    async def w(ctx: cf.Context, _: Any) -> None:  # pragma: no cover - never executed
        return None

    fenced = [app.start("w", i).id for i in range(2)]  # unclaimed: fence 0
    stale = app.start("w", 9).id  # written with a fence it does not have
    fresh = [store.run_row(**app.registry.get("w").new_run(i, None, 5.0)) for i in range(new)]
    entries = [_entry(fenced[i % 2], f"s{i}") for i in range(rows)] + [_entry(stale, "lost")]
    ends = [store.RunFinish(fenced[-1 - i], RunState.COMPLETED, f'"{i}"', None, 7.125) for i in range(finishes)]
    writer = EntryWriter(app.engine)
    try:
        ours, created, finished = writer.write({**{r: 0 for r in fenced}, stale: 3}, entries, fresh,
                                               ends + [store.RunFinish(stale, RunState.FAILED, None, "{}", 7.0)])
    finally:
        writer.close()
    assert ours == set(fenced)
    assert created == {r["id"] for r in fresh}
    assert set(finished) == {f.run_id for f in ends}
    for f in ends:
        row: Any = finished[f.run_id]  # a RunRow: a namedtuple built from RUN_COLUMNS, its fields unknown to mypy
        assert (row.status, row.output, row.updated_at) == (RunState.COMPLETED, f.output, 7.125)
    with app.engine.begin() as conn:
        written = conn.execute(sa.select(journal.c.run_id, journal.c.key, journal.c.output, journal.c.started_at,
                                         journal.c.finished_at)).all()
        statuses = dict(conn.execute(sa.select(runs.c.id, runs.c.status)).all())  # type: ignore[arg-type]
    assert sorted(written) == sorted((e["run_id"], e["key"], e["output"], 1.5, 2.25) for e in entries[:-1])
    assert statuses[stale] == RunState.PENDING
    assert all(statuses[r["id"]] == RunState.PENDING for r in fresh)
