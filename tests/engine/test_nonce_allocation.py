"""Binding a nonce to an intent (``chainstore.allocate_nonce``; on Postgres one
statement) on SQLite and Postgres: the next nonce of the sender, once per intent
even when two transactions allocate the same intent at once (two runs sharing an
idempotency key), and a clear error when the sender has no nonce row."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.chain import chainstore
from chainflow.storage.schema import nonces


def _intent(conn: sa.Connection, key: str) -> int:
    return int(chainstore.intent(conn, chain="c", sender="s", key=key, run_id=None, step="x", request="{}",
                                 finality="{}", now=1.0).id)


def _next_nonce(app: cf.Chainflow) -> int:
    with app.engine.connect() as conn:
        return int(conn.execute(sa.select(nonces.c.next_nonce).where(nonces.c.chain == "c")).scalar_one())


def test_intents_take_the_next_nonces_in_turn_and_keep_theirs(make_app: Any) -> None:
    app = make_app()
    app.ensure_schema()
    with app.engine.begin() as conn:
        chainstore.seed_nonces(conn, "c", "s", 7)
        first, second = _intent(conn, "a"), _intent(conn, "b")
        bound = chainstore.allocate_nonce(conn, first, '{"gas": 1}', 2.0)
        assert (bound.id, bound.nonce, bound.state, bound.request) == (first, 7, "allocated", '{"gas": 1}')
        assert chainstore.allocate_nonce(conn, second, "{}", 2.0).nonce == 8
        again = chainstore.allocate_nonce(conn, first, '{"gas": 2}', 3.0)  # bound already: as it was
        assert (again.nonce, again.request) == (7, '{"gas": 1}')
    assert _next_nonce(app) == 9


def test_an_intent_allocated_by_two_transactions_at_once_takes_one_nonce(make_app: Any) -> None:
    app = make_app()
    app.ensure_schema()
    with app.engine.begin() as conn:
        chainstore.seed_nonces(conn, "c", "s", 0)
        sub_id = _intent(conn, "shared")
    got: dict[str, int] = {}
    first_in = threading.Event()

    def allocate(label: str, hold: float) -> None:
        with app.engine.begin() as conn:
            got[label] = int(chainstore.allocate_nonce(conn, sub_id, "{}", 2.0).nonce)
            first_in.set()
            time.sleep(hold)  # still uncommitted: the other one waits for this transaction

    first = threading.Thread(target=allocate, args=("first", 0.5))
    first.start()
    assert first_in.wait(10)
    second = threading.Thread(target=allocate, args=("second", 0.0))
    second.start()
    first.join(10)
    second.join(10)
    assert got == {"first": 0, "second": 0}
    assert _next_nonce(app) == 1, "one nonce taken"


def test_a_sender_without_a_nonce_row_is_named(make_app: Any) -> None:
    app = make_app()
    app.ensure_schema()
    with app.engine.begin() as conn:
        sub_id = _intent(conn, "k")
        with pytest.raises(LookupError, match="no nonce row for sender s on chain 'c'"):
            chainstore.allocate_nonce(conn, sub_id, "{}", 2.0)
