"""The Bitcoin adapter against a real regtest node (``regtest_node``: Debian's litecoind
0.21, or bitcoind): what the node accepts, mines and reports, checked with the node's
own answers.  Every test pays from a wallet of its own seed, so tests sharing a node
never see each other's coins."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from adapters.bitcoin import BitcoinChain, BitcoinReceipt, DescriptorWallet, NodeMismatch, transaction
from chainflow.chain.adapter import BroadcastOutcome, Coin, EndpointError

from ._btc import master_key


@pytest.fixture
def node(regtest_node: Any) -> Any:
    return regtest_node


def _chain(node: Any, seed: bytes | None = None, **options: Any) -> BitcoinChain:
    wallet = DescriptorWallet(master_key(seed or os.urandom(16), node.network))
    return BitcoinChain("btc", rpc=node.rpc_url, network=node.network, wallet=wallet, **options)


@pytest.fixture
async def btc(node: Any) -> AsyncIterator[BitcoinChain]:
    chain = _chain(node, lookahead=5)
    yield chain
    await chain.aclose()


def _sats(btc_amount: Decimal) -> int:
    return int(btc_amount * 100_000_000)


async def _pay(btc: BitcoinChain, node: Any, *payments: tuple[str, int]) -> tuple[dict[str, Any], list[str]]:
    """An estimated request paying ``payments`` and the outpoints chosen for it."""
    requests = [btc.prepare(btc.pay(address, sats=sats)) for address, sats in payments]
    request = await btc.estimate(requests[0] if len(requests) == 1 else btc.merge(requests))
    chosen = btc.select(request, await btc.coins(btc.sender()))
    return request, [c.outpoint for c in chosen]


async def test_coins_are_the_wallets_confirmed_outputs_exactly(btc: BitcoinChain, node: Any) -> None:
    first = node.fund(btc.sender(), 123_456)
    other = node.fund(btc.keyring.addresses[4], 7_654_321)  # the last lookahead address
    coins = await btc.coins(btc.sender())
    assert sorted(coins, key=lambda c: c.value) == [Coin(first, 123_456), Coin(other, 7_654_321)]
    node.mine(1, to=btc.sender())  # an immature coinbase is not spendable
    assert sorted(await btc.coins(btc.sender()), key=lambda c: c.value) == [Coin(first, 123_456),
                                                                             Coin(other, 7_654_321)]
    node.rpc("sendtoaddress", btc.sender(), "0.001")  # unconfirmed: not a coin yet
    assert len(await btc.coins(btc.sender())) == 2


async def test_a_payment_is_accepted_rebroadcast_idempotently_and_its_receipt_exact(btc: BitcoinChain,
                                                                                    node: Any) -> None:
    funded = node.fund(btc.sender(), 1_000_000)
    payee = node.rpc("getnewaddress")
    request, outpoints = await _pay(btc, node, (payee, 150_000))
    assert outpoints == [funded]
    signed = await btc.sign(request, outpoints, None)
    estimate = node.rpc("estimatesmartfee", btc.fee_target)  # none on a fresh regtest chain
    market = _sats(estimate["feerate"]) if "feerate" in estimate else btc.fallback_feerate
    assert signed.fees["feerate"] == request["feerate"] == min(max(market, 1000), btc.max_feerate)
    assert (await btc.broadcast(signed.raw)).outcome is BroadcastOutcome.ACCEPTED
    assert await btc.in_mempool(signed.tx_hash)
    entry = node.rpc("getmempoolentry", signed.tx_hash)
    assert _sats(entry["fees"]["base"]) == signed.fees["fee"]
    assert (await btc.broadcast(signed.raw)).outcome is BroadcastOutcome.ALREADY_KNOWN
    assert await btc.receipt(signed.tx_hash) is None  # not in a block yet
    (block_hash,) = node.mine(1)
    again = await btc.broadcast(signed.raw)
    assert again.outcome is BroadcastOutcome.ALREADY_KNOWN and "already in block chain" in again.detail
    receipt = await btc.receipt(signed.tx_hash)
    assert isinstance(receipt, BitcoinReceipt)
    block = node.rpc("getblock", block_hash, 1)
    assert (receipt.block_hash, receipt.block_number) == (block_hash, block["height"])
    assert receipt.position == block["tx"].index(signed.tx_hash)
    assert receipt.effective_fee == signed.fees["fee"] == entry_fee(node, signed.tx_hash)
    assert receipt.vsize == entry["vsize"] and receipt.feerate == signed.fees["fee"] * 1000 // entry["vsize"]
    assert receipt.output_index == 0 and receipt.outputs[0] == [payee, 150_000]
    assert receipt.outputs[1] == [btc.sender(), 1_000_000 - 150_000 - signed.fees["fee"]]
    paid = node.rpc("gettxout", signed.tx_hash, 0)
    assert _sats(paid["value"]) == 150_000 and paid["confirmations"] == 1
    assert await btc.spender(funded) == signed.tx_hash
    assert await btc.spender(f"{signed.tx_hash}:1") is None  # the change is unspent
    assert await btc.coins(btc.sender()) == [Coin(f"{signed.tx_hash}:1", receipt.outputs[1][1])]


def entry_fee(node: Any, txid: str) -> int:
    """The fee of a mined transaction from the node's own view of its inputs."""
    tx = node.rpc("getrawtransaction", txid, True)
    spent = sum(_sats(node.rpc("getrawtransaction", i["txid"], True)["vout"][i["vout"]]["value"]) for i in tx["vin"])
    return spent - sum(_sats(o["value"]) for o in tx["vout"])


async def test_a_bumped_replacement_evicts_the_original(btc: BitcoinChain, node: Any) -> None:
    funded = node.fund(btc.sender(), 500_000)
    request, outpoints = await _pay(btc, node, (node.rpc("getnewaddress"), 100_000))
    first = await btc.sign(request, outpoints, None)
    assert (await btc.broadcast(first.raw)).outcome is BroadcastOutcome.ACCEPTED
    same_rate = await btc.sign(request, outpoints, {"feerate": first.fees["feerate"] + 100})
    assert (await btc.broadcast(same_rate.raw)).outcome is BroadcastOutcome.UNDERPRICED  # BIP125: not enough more
    bumped = await btc.sign(request, outpoints, btc.bump_fees(first.fees, 1.125))
    assert bumped.fees["fee"] > first.fees["fee"]
    assert (await btc.broadcast(bumped.raw)).outcome is BroadcastOutcome.ACCEPTED
    assert not await btc.in_mempool(first.tx_hash) and await btc.in_mempool(bumped.tx_hash)
    assert (await btc.broadcast(first.raw)).outcome is BroadcastOutcome.UNDERPRICED
    node.mine(1)
    assert (await btc.broadcast(first.raw)).outcome is BroadcastOutcome.SPENT
    assert await btc.receipt(first.tx_hash) is None
    receipt = await btc.receipt(bumped.tx_hash)
    assert receipt is not None and receipt.effective_fee == bumped.fees["fee"]
    assert await btc.spender(funded) == bumped.tx_hash


async def test_change_of_a_version_a_reorg_replaced_is_known_to_conflict(btc: BitcoinChain, node: Any) -> None:
    """A payment's bump is mined, then a reorg mines its first version instead: the
    bump's change can never exist, and ``conflicting`` names the first version, also
    from an adapter that never saw either (the node's ``-txindex`` keeps the orphaned
    bump).  An outpoint that exists, or whose transaction is only waiting in the
    mempool, conflicts with nothing."""
    funded = node.fund(btc.sender(), 500_000)
    request, outpoints = await _pay(btc, node, (node.rpc("getnewaddress"), 100_000))
    first = await btc.sign(request, outpoints, None)
    assert (await btc.broadcast(first.raw)).outcome is BroadcastOutcome.ACCEPTED
    bumped = await btc.sign(request, outpoints, btc.bump_fees(first.fees, 1.125))
    assert (await btc.broadcast(bumped.raw)).outcome is BroadcastOutcome.ACCEPTED
    node.mine(1)
    assert await btc.conflicting(f"{bumped.tx_hash}:1") is None and await btc.conflicting(funded) is None
    node.reorg(1, include=[first.raw.hex()])
    fresh = _chain(node)
    try:
        for adapter in (btc, fresh):
            assert await adapter.spender(f"{bumped.tx_hash}:1") is None
            assert await adapter.conflicting(f"{bumped.tx_hash}:1") == first.tx_hash
            assert await adapter.conflicting(f"{first.tx_hash}:1") is None
        node.reorg(2)  # its block and the one above: back to the mempool, nothing in the chain against it
        assert await btc.in_mempool(first.tx_hash)
        assert await fresh.conflicting(f"{first.tx_hash}:1") is None
        assert await fresh.conflicting(f"{bumped.tx_hash}:1") is None, "the bump could be mined again"
    finally:
        await fresh.aclose()


async def test_a_batch_pays_in_request_order_with_change_last(btc: BitcoinChain, node: Any) -> None:
    node.fund(btc.sender(), 300_000)
    node.fund(btc.sender(), 200_000)
    payees = [node.rpc("getnewaddress") for _ in range(3)]
    request, outpoints = await _pay(btc, node, (payees[0], 250_000), (payees[1], 120_000), (payees[2], 50_000))
    assert len(outpoints) == 2
    signed = await btc.sign(request, outpoints, None)
    assert (await btc.broadcast(signed.raw)).outcome is BroadcastOutcome.ACCEPTED
    node.mine(1)
    receipt = await btc.receipt(signed.tx_hash)
    assert receipt is not None
    assert receipt.outputs == [[payees[0], 250_000], [payees[1], 120_000], [payees[2], 50_000],
                               [btc.sender(), 500_000 - 420_000 - signed.fees["fee"]]]
    member = btc.member_receipt(receipt, 2)
    assert member.output_index == 2  # type: ignore[attr-defined]
    assert _sats(node.rpc("gettxout", signed.tx_hash, 2)["value"]) == 50_000


async def test_coins_and_receipts_follow_a_reorg(btc: BitcoinChain, node: Any) -> None:
    funded = node.fund(btc.sender(), 400_000)
    assert [c.outpoint for c in await btc.coins(btc.sender())] == [funded]
    node.reorg(1)  # the funding transaction goes back to the mempool, not into the fork
    assert await btc.coins(btc.sender()) == []
    assert await btc.spender(funded) is None  # not spent: not in the chain at all
    node.mine(1)  # re-included
    assert [c.outpoint for c in await btc.coins(btc.sender())] == [funded]
    request, outpoints = await _pay(btc, node, (node.rpc("getnewaddress"), 100_000))
    signed = await btc.sign(request, outpoints, None)
    assert (await btc.broadcast(signed.raw)).outcome is BroadcastOutcome.ACCEPTED
    node.mine(1)
    assert await btc.receipt(signed.tx_hash) is not None
    node.reorg(1)
    assert await btc.receipt(signed.tx_hash) is None  # its block is orphaned
    assert await btc.in_mempool(signed.tx_hash)
    assert await btc.spender(funded) is None


async def test_the_spender_search_names_what_it_found_and_only_that(node: Any) -> None:
    """Found within the lookback: its txid.  Below it: a sentence, which a receipt lookup
    answers with None instead of sending it to the node as an id (the tracker asks it
    of failed intents' coins every head).  Walked down to the coin's own block without
    a spend, as when a reorg takes the spend back between the two reads: unspent."""
    btc = _chain(node, lookahead=2, spender_lookback=3)
    try:
        spends = {}

        async def spend(coin: str) -> None:
            request = await btc.estimate(btc.prepare(btc.pay(node.rpc("getnewaddress"), sats=100_000)))
            spends[coin] = await btc.sign(request, [coin], None)
            await btc.broadcast(spends[coin].raw)
            node.mine(1)
            assert await btc.spender(coin) == spends[coin].tx_hash

        await spend(first := node.fund(btc.sender(), 300_000))
        node.mine(3)
        deep = await btc.spender(first)
        assert deep == "a transaction more than 3 blocks below the tip (not searched further)"
        assert await btc.receipt(deep) is None
        await spend(second := node.fund(btc.sender(), 300_000))
        call = btc.rpc.call

        async def racing(method: str, *params: Any, **kw: Any) -> Any:
            result = await call(method, *params, **kw)
            if method == "gettxout":
                node.reorg(1)  # the spend's block orphaned right after the coin read as spent
            return result

        btc.rpc.call = racing  # type: ignore[method-assign]
        try:
            assert await btc.spender(second) is None, "nothing from the tip down to the coin's block spends it"
        finally:
            btc.rpc.call = call  # type: ignore[method-assign]
        assert spends[second].tx_hash in node.mempool()
    finally:
        await btc.aclose()


async def test_a_conflict_no_fee_can_replace_is_rejected_not_underpriced(btc: BitcoinChain, node: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Another program spends a reserved coin without signalling replaceability: no fee
    gets our version in, so bumping towards max_feerate would only overpay once that
    spend leaves the mempool."""
    node.fund(btc.sender(), 300_000)
    request, outpoints = await _pay(btc, node, (node.rpc("getnewaddress"), 100_000))
    monkeypatch.setattr(transaction, "RBF_SEQUENCE", 0xFFFFFFFF)
    foreign = await btc.sign(request, outpoints, None)
    monkeypatch.undo()
    node.rpc("sendrawtransaction", foreign.raw.hex())
    ours = await btc.sign(request, outpoints, {"feerate": 50_000})
    result = await btc.broadcast(ours.raw)
    assert result.outcome is BroadcastOutcome.REJECTED and "txn-mempool-conflict" in result.detail


async def test_the_reader_follows_the_node(btc: BitcoinChain, node: Any) -> None:
    head = await btc.head()
    assert head.number == node.rpc("getblockcount") and head.hash == node.rpc("getbestblockhash")
    assert await btc.header_at(head.number) == head
    assert await btc.header_at(head.number + 1) is None
    parent = await btc.header_at(head.number - 1)
    assert parent is not None and parent.hash == head.parent_hash
    assert await btc.block_tx_hashes(head.hash) == node.rpc("getblock", head.hash, 1)["tx"]
    assert await btc.block_tx_hashes("00" * 32) == []
    assert await btc.tagged_number("finalized") is None


async def test_a_wrong_password_is_a_clear_endpoint_error(node: Any) -> None:
    url = node.rpc_url
    scheme, rest = url.split("://", 1)
    user = rest.split("@", 1)[0].split(":", 1)[0]
    wrong = f"{scheme}://{user}:not-the-password-1234@{rest.split('@', 1)[1]}"
    chain = BitcoinChain("btc", rpc=wrong, network=node.network, wallet=DescriptorWallet(master_key(b"x", node.network)))
    with pytest.raises(EndpointError) as caught:
        await chain.head()
    assert caught.value.status == 401 and "not-the-password-1234" not in str(caught.value)
    assert "check the chain's RPC URL and credentials" in str(caught.value)
    await chain.aclose()


async def test_a_node_of_another_network_is_refused(node: Any) -> None:
    other = "regtest" if node.network == "litecoin-regtest" else "litecoin-regtest"
    chain = BitcoinChain("btc", rpc=node.rpc_url, network=other, wallet=DescriptorWallet(master_key(b"x", other)))
    with pytest.raises(NodeMismatch, match=f"chain 'btc' is configured for {other} but its node at "
                                           r"http://127\.0\.0\.1:\d+ serves another network"):
        await chain.head()
    await chain.aclose()


async def test_the_engine_pays_once_through_the_adapter(node: Any, db_url: str) -> None:
    """``ctx.submit`` end to end: reserved coins, signed and broadcast bytes, the tracker
    settling the receipt on ``Confirmations(2)``; checked on chain and in the tables."""
    import asyncio
    import json

    import sqlalchemy as sa

    import chainflow as cf
    from chainflow.chain.tracker import Tracker
    from chainflow.storage.schema import reservations, submissions, tx_attempts

    from ..engine._util import running_worker, wait_until

    btc = _chain(node)
    funded = node.fund(btc.sender(), 600_000)
    payee = node.rpc("getnewaddress")
    config = cf.TrackerConfig(poll_interval=0.05, start_depth=0)
    app = cf.Chainflow(db_url, chains=[btc], tracker=config, lease_seconds=1.0)
    app.ensure_schema()

    @app.workflow("payout")
    async def payout(ctx: cf.Context, order: str) -> dict[str, Any]:
        r = await ctx.submit("pay", chain="btc", tx=btc.pay(payee, sats=150_000), idempotency_key=f"payout:{order}",
                             finality=cf.Confirmations(2))
        return {"tx": r.tx_hash, "fee": r.effective_fee, "output": r.output_index}  # type: ignore[attr-defined]

    tracker = Tracker(app.database, app.clock, btc, "test-tracker", config)
    try:
        async with running_worker(app, track=False):
            await tracker.step()
            run = await app.astart("payout", "o-1")
            for _ in range(100):
                await tracker.step()
                if app.status(run.id).done:
                    break
                with app.engine.begin() as conn:
                    signed = conn.execute(sa.select(sa.func.count()).select_from(tx_attempts)).scalar()
                if signed:
                    node.mine(1)  # the first block holds the broadcast payment, the next confirm it
                else:
                    await asyncio.sleep(0.05)
            await wait_until(lambda: app.status(run.id).done, what="completion")
        status = app.status(run.id)
        assert status.status == "completed", status.error
        with app.engine.begin() as conn:
            sub = conn.execute(sa.select(submissions)).one()
            (attempt,) = conn.execute(sa.select(tx_attempts).where(tx_attempts.c.submission_id == sub.id)).all()
            reserved = [r.outpoint for r in conn.execute(sa.select(reservations.c.outpoint))]
        fee = json.loads(attempt.fees)["fee"]
        assert status.output == {"tx": attempt.tx_hash, "fee": fee, "output": 0}
        assert reserved == [funded]
        tx = node.rpc("getrawtransaction", attempt.tx_hash, True)
        assert [f"{i['txid']}:{i['vout']}" for i in tx["vin"]] == [funded]
        assert _sats(tx["vout"][0]["value"]) == 150_000 and tx["confirmations"] >= 2
        receipt = json.loads(sub.receipt)
        assert (receipt["family"], receipt["effective_fee"], receipt["outputs"][0]) == ("bitcoin", fee, [payee, 150_000])
    finally:
        app.engine.dispose()
        await btc.aclose()
