"""The schedules table's SQL (``cf_schedules``): what the workers that declare a
schedule share about it.

Exactly-once per fire time rests on two things: a schedule's row is locked by the one
transaction that fires it (Postgres: ``FOR UPDATE SKIP LOCKED``, so other workers pass
over it instead of waiting; SQLite: one writer at a time), and each fire's run is
created with the idempotency key ``schedule:<name>:<fire time>``, unique in
``cf_runs``: a fire started once is never started again, whichever worker looks.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa

from . import limits
from .schema import schedules


def declare(conn: sa.Connection, name: str, workflow: str, spec: str, now: float) -> None:
    """Record a schedule the app declares; a changed trigger or workflow restarts its
    timing from now (``next_fire`` NULL) rather than firing what the old one missed.
    Its pause and its last fire are kept."""
    row = conn.execute(sa.select(schedules.c.workflow, schedules.c.spec).where(schedules.c.name == name)
                       .with_for_update()).first()
    if row is None:
        try:
            with conn.begin_nested():
                conn.execute(schedules.insert().values(name=name, workflow=workflow, spec=spec, updated_at=now))
        except sa.exc.IntegrityError:
            pass  # another worker declared it at the same moment
    elif (row.workflow, row.spec) != (workflow, spec):
        conn.execute(schedules.update().where(schedules.c.name == name)
                     .values(workflow=workflow, spec=spec, next_fire=None, updated_at=now))


def due(conn: sa.Connection, names: Collection[str], now: float) -> list[sa.Row[Any]]:
    """The unpaused schedules among ``names`` with a fire due (or no fire time yet),
    locked for this transaction; on Postgres those another worker is firing are
    skipped."""
    if not names:
        return []
    q = (sa.select(schedules.c.name, schedules.c.next_fire)
         .where(schedules.c.name.in_(list(names)), schedules.c.paused.is_(sa.false()),
                sa.or_(schedules.c.next_fire.is_(None), schedules.c.next_fire <= now))
         .order_by(schedules.c.name))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    return list(conn.execute(q))


def advance(conn: sa.Connection, name: str, next_fire: float | None, fired: tuple[float, str] | None,
            now: float) -> None:
    """Move a schedule to its next fire time; ``fired``: the latest fire time started
    and its run id."""
    values: dict[str, Any] = dict(next_fire=next_fire, updated_at=now)
    if fired is not None:
        values.update(last_fire=fired[0], last_run_id=fired[1])
    conn.execute(schedules.update().where(schedules.c.name == name).values(**values))


def next_due(conn: sa.Connection, names: Collection[str]) -> float | None:
    """The earliest next fire time of the unpaused ``names``."""
    if not names:
        return None
    return conn.execute(sa.select(sa.func.min(schedules.c.next_fire)).where(
        schedules.c.name.in_(list(names)), schedules.c.paused.is_(sa.false()))).scalar()


def all_schedules(conn: sa.Connection) -> list[sa.Row[Any]]:
    return list(conn.execute(sa.select(schedules).order_by(schedules.c.name)))


def set_paused(conn: sa.Connection, name: str, paused: bool, now: float) -> bool:
    """Pause or resume; a resumed schedule's timing restarts from now (the fires of the
    pause are not made up).  False when no schedule has that name."""
    named = limits.matches(schedules.c.name, name)
    if not paused:
        conn.execute(schedules.update().where(named, schedules.c.paused.is_(sa.true())).values(next_fire=None))
    return bool(conn.execute(schedules.update().where(named).values(paused=paused, updated_at=now)).rowcount)
