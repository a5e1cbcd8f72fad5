"""The head follower's leadership: its writes are fenced, and they renew it.

Each head's write transaction takes or keeps the chain's leadership before anything
else, so a tracker that lost it (frozen past its lease while another took over)
writes nothing, however recent its own proof looks; and a steady leader needs no
transaction of its own for the renewal: one read and one write per head.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.chain import chainstore
from chainflow.chain.tracker import Tracker
from chainflow.storage.schema import leaders
from chainflow.testing import CallLog

from .test_utxo_protocol import CHAIN, Rig


async def test_a_deposed_tracker_writes_nothing_and_a_steady_one_renews_in_its_head_write(
        db_url: str, ledger: CallLog) -> None:
    rig = Rig(db_url, ledger)
    try:
        first = rig.tracker
        other = Tracker(rig.app.database, rig.app.clock, rig.adapter, "other-tracker", rig.config)
        engine = rig.app.engine
        transactions: list[list[str]] = []  # the statements of each transaction, while counting
        counting = False

        def began(*_: object) -> None:
            if counting:
                transactions.append([])

        def statement(_conn: object, _cursor: object, text: str, *_: object) -> None:
            if counting and transactions:
                transactions[-1].append(text)

        assert await first.iteration() is not None  # first contact: takes the lease
        expiries = []
        sa.event.listen(engine, "begin", began)
        sa.event.listen(engine, "before_cursor_execute", statement)
        try:
            for _ in range(3):
                rig.chain.mine()
                counting = True
                assert (await first.iteration()) is not None
                counting = False
                leader = rig.app.database.read(chainstore.leader, f"tracker:{CHAIN}")
                assert leader is not None
                expiries.append(leader.expires)
        finally:
            sa.event.remove(engine, "begin", began)
            sa.event.remove(engine, "before_cursor_execute", statement)
        renewals = [tx for tx in transactions if any("cf_leaders" in text for text in tx)]
        assert len(renewals) == 3, "one renewal per head"
        assert all(any(text.startswith("INSERT INTO cf_headers") for text in tx) for tx in renewals), \
            "the renewal rides in the head's write, no transaction of its own"
        assert expiries == sorted(expiries) and len(set(expiries)) == 3, "each head's write renewed the lease"

        assert await other.iteration() is None  # the first tracker leads
        # the first one freezes past its lease; the other takes over and follows a head
        with engine.begin() as conn:
            conn.execute(leaders.update().values(expires=0.0))
        rig.chain.mine()
        assert await other.iteration() is not None
        # the first one resumes: its own proof still looks fresh, but its write is refused
        rig.chain.mine()
        assert await first.iteration() is None
        tip = rig.app.database.read(chainstore.header_tip, CHAIN)
        assert tip is not None
        assert tip.number == rig.chain.height - 1, "the deposed tracker stored nothing"
        leader = rig.app.database.read(chainstore.leader, f"tracker:{CHAIN}")
        assert leader is not None
        assert leader.owner == "other-tracker"
        assert await first.iteration() is None  # and from then on asks first
        assert (await other.iteration()) is not None
        tip = rig.app.database.read(chainstore.header_tip, CHAIN)
        assert tip is not None
        assert tip.number == rig.chain.height
    finally:
        rig.close()


def test_leader_lease_is_checked_and_defaults_to_ten_polls() -> None:
    assert cf.TrackerConfig(poll_interval=1.0).leadership_ttl == 10.0
    assert cf.TrackerConfig(poll_interval=0.05).leadership_ttl == 5.0
    assert cf.TrackerConfig(poll_interval=0.05, leader_lease=1.5).leadership_ttl == 1.5
    for bad, says in ((0, "TrackerConfig.leader_lease"), (float("nan"), "TrackerConfig.leader_lease"),
                      (0.05, "at least 2 poll intervals")):
        with pytest.raises(ValueError, match=says):
            cf.TrackerConfig(poll_interval=0.05, leader_lease=bad)


async def test_a_worker_warns_of_unsettled_intents_on_a_chain_it_does_not_configure(
        db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A chain renamed (or dropped) with intents still in flight: nothing follows them
    and their runs wait for good, so the worker says so when it starts."""
    import logging

    from chainflow.storage.schema import submissions
    from chainflow.testing import FakeUtxoAdapter, FakeUtxoChain

    app = cf.Chainflow(db_url, chains=[FakeUtxoAdapter("btc-new", FakeUtxoChain())])
    app.ensure_schema()
    with app.engine.begin() as conn:
        for key, state in (("a", "broadcast"), ("b", "included"), ("c", "final")):
            conn.execute(sa.insert(submissions).values(chain="btc-old", sender="w", idempotency_key=key, request="{}",
                                                       finality="{}", state=state, created_at=1.0, updated_at=1.0))
    worker = app.worker(poll_interval=0.05)
    with caplog.at_level(logging.WARNING, logger="chainflow.worker"):
        await worker.start()
        await worker.close()
    warned = [r.getMessage() for r in caplog.records if "btc-old" in r.getMessage()]
    assert warned == ["2 unsettled submission(s) on chain 'btc-old', which this app does not configure: nothing "
                      "follows them, and their runs wait for good (a chain renamed or dropped?)"]
