"""A Bitcoin payout worker process for the crash test (tests/bitcoin/test_btc_crash.py).

    python tests/bitcoin/payout_worker.py

Environment:
    CF_URL, CF_RPC, CF_NETWORK   database, node (with its credentials), the adapter's network
    CF_XPRV                      the payout wallet (a test tprv made from a seed, never a real key)
    CF_BATCH                     "1": payouts are batched (window 0.5 s, at most 10 per batch)
    CF_CONCURRENCY               worker slots (default 16)
    CF_CRASH_AT                  "<phase>:<n>": SIGKILL this process the n-th time it reaches
                                 <phase>, one of
                                   allocated        coins reserved for the intent, nothing signed
                                   signed           signed bytes committed, nothing sent
                                   broadcast        the node has the tx, our record of the broadcast not
                                   final            final, the step's journal write not committed
                                   batch-recorded   batch row, members and reservation committed, unsigned
                                   batch-signed     the batch's signed bytes committed, nothing sent
                                   batch-broadcast  the node has the batch, our record of it not
    CF_WORKER                    worker id

The workflow ``payout`` pays ``ev["sats"]`` to ``ev["to"]`` under ``ev["key"]`` with
``Confirmations(ev["confs"])``, then books it in a ledger step.  Kill points are
monkeypatched onto the engine and the adapter here, in the test's worker: neither has
crash hooks.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any

import chainflow as cf
from adapters.bitcoin import BitcoinChain, BitcoinReceipt, DescriptorWallet

CHAIN = "btc"
BUMP_BLOCKS = 3  # pending for this many blocks: the tracker bumps the fee
PHASES = ("allocated", "signed", "broadcast", "final", "batch-recorded", "batch-signed", "batch-broadcast")


def build(url: str, rpc_url: str, network: str, wallet: DescriptorWallet, *, batching: bool,
          lease: float = 2.0) -> cf.Chainflow:
    btc = BitcoinChain(CHAIN, rpc=rpc_url, network=network, wallet=wallet, lookahead=20)
    tracker = cf.TrackerConfig(poll_interval=0.05, rebroadcast_blocks=2, bump_blocks=BUMP_BLOCKS, leader_lease=1.5,
                               batching={CHAIN: cf.Batching(window=0.5, max_size=10)} if batching else {})
    app = cf.Chainflow(url, chains=[btc], lease_seconds=lease, tracker=tracker)
    # the wallet and the chain as a user would log them: their reprs must hide the key
    logging.getLogger("payout_worker").info("paying from %r with %r, batching %s", wallet, btc, batching)

    @app.workflow("payout")
    async def payout(ctx: cf.Context, ev: dict[str, Any]) -> dict[str, Any]:
        r = await ctx.submit("payout", chain=CHAIN, tx=btc.pay(ev["to"], sats=ev["sats"]),
                             idempotency_key=ev["key"], finality=cf.Confirmations(ev["confs"]))
        assert isinstance(r, BitcoinReceipt)
        entry = {"key": ev["key"], "tx": r.tx_hash, "vout": r.output_index, "sats": ev["sats"]}
        await ctx.step("ledger", lambda: entry)
        return entry

    return app


def _install_crash(spec: str) -> None:
    phase, _, nth = spec.partition(":")
    if phase not in PHASES:
        raise SystemExit(f"unknown crash phase {phase!r} (known: {', '.join(PHASES)})")
    limit = int(nth or 1)
    seen = {"n": 0}

    def maybe_die() -> None:
        seen["n"] += 1
        if seen["n"] >= limit:
            os.kill(os.getpid(), signal.SIGKILL)

    from chainflow.chain import batcher, chainstore, submission
    from chainflow.states import SubmissionState

    if phase == "allocated":  # the first signature only: a fee bump signs too
        sign_first = submission.Submitter._sign_first

        async def die_before_signing(self: Any, *args: Any) -> None:
            maybe_die()
            await sign_first(self, *args)

        submission.Submitter._sign_first = die_before_signing  # type: ignore[method-assign,assignment]
    elif phase in ("signed", "broadcast"):
        original = submission.broadcast_latest

        async def broadcast(db: Any, clock: Any, ctx: Any, adapter: Any, sub: Any, *rest: Any) -> Any:
            if phase == "signed":
                maybe_die()
            else:
                attempts = await db.atx(chainstore.attempts_of, sub.id)
                if attempts:
                    await adapter.broadcast(attempts[-1].raw)
                    maybe_die()
            return await original(db, clock, ctx, adapter, sub, *rest)

        submission.broadcast_latest = broadcast  # type: ignore[assignment]
    elif phase == "final":
        lock = submission._lock_final

        def die_before_journal(sub_id: int) -> Any:
            def then(sub: Any) -> Any:  # locked and final, inside the journal's transaction
                maybe_die()
                return sub

            return lock(sub_id).then(then)

        submission._lock_final = die_before_journal
    elif phase == "batch-recorded":
        send = batcher.Batcher._send

        async def die_before_batch_signing(self: Any, batch: Any) -> int:
            if batch.state == SubmissionState.ALLOCATED:
                maybe_die()
            return await send(self, batch)

        batcher.Batcher._send = die_before_batch_signing  # type: ignore[method-assign]
    else:  # batch-signed, batch-broadcast: the batcher's own broadcast of its stored bytes
        original_batch = batcher.broadcast_latest

        async def broadcast_batch(db: Any, clock: Any, ctx: Any, adapter: Any, sub: Any) -> Any:
            if phase == "batch-signed":
                maybe_die()
            else:
                attempts = await db.atx(chainstore.attempts_of, sub.id)
                await adapter.broadcast(attempts[-1].raw)
                maybe_die()
            return await original_batch(db, clock, ctx, adapter, sub)

        batcher.broadcast_latest = broadcast_batch  # type: ignore[assignment]


def main() -> None:
    env = os.environ
    # the engine's own log, so the test can check that no key material ever reaches it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per RPC call
    if env.get("CF_CRASH_AT"):
        _install_crash(env["CF_CRASH_AT"])
    app = build(env["CF_URL"], env["CF_RPC"], env["CF_NETWORK"], DescriptorWallet.from_env("CF_XPRV"),
                batching=env.get("CF_BATCH") == "1")
    app.run_worker(concurrency=int(env.get("CF_CONCURRENCY", "16")), worker_id=env.get("CF_WORKER"))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main()
