"""A mint worker process for the submission crash and load tests.

    python tests/submission/mint_worker.py

Environment:
    CF_URL, CF_RPC, CF_TOKEN, CF_KEY   database, node, token address, minter key (dev key)
    CF_CONCURRENCY                     worker slots (default 32)
    CF_CRASH_AT                        "<phase>:<n>": SIGKILL this process at the n-th time it
                                       reaches <phase>: allocated | signed | broadcast | final,
                                       or burn-signed | burn-broadcast | burn-final: the same
                                       points, reached by a compensation's submission only
    CF_WORKER                          worker id

Kill points are monkeypatched onto the engine here, in the test's worker: the engine
itself has no crash hooks.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import chainflow as cf
from adapters.evm import EvmChain, EvmReceipt, LocalSigner

CHAIN = "local"


def build(url: str, rpc_url: str, token_address: str, key: str, lease: float = 2.0) -> cf.Chainflow:
    from web3 import Web3

    from devnet import token_contract

    signer = LocalSigner.from_key(key)
    token = token_contract(Web3(Web3.HTTPProvider(rpc_url)), token_address)
    app = cf.Chainflow(url, chains=[EvmChain(CHAIN, rpc_url, signer)], lease_seconds=lease,
                       tracker=cf.TrackerConfig(poll_interval=0.05, rebroadcast_blocks=2, leader_lease=1.5))

    @app.workflow("mint")
    async def mint(ctx: cf.Context, ev: dict[str, Any]) -> dict[str, Any]:
        r = await ctx.submit("mint", chain=CHAIN, tx=token.functions.mint(signer.address, ev["amount"]),
                             idempotency_key=ev["id"], finality=cf.Confirmations(1))
        assert isinstance(r, EvmReceipt)
        return {"tx": r.tx_hash, "nonce": r.nonce, "block": r.block_number}

    @app.workflow("mint-then-fail")
    async def mint_then_fail(ctx: cf.Context, ev: dict[str, Any]) -> None:
        """Mint to ``ev["to"]``; the ledger step after it fails for good, so the
        compensation burns what was minted, on chain, through the exactly-once path."""

        await ctx.submit("mint", chain=CHAIN, tx=token.functions.mint(ev["to"], ev["amount"]),
                         idempotency_key=ev["id"], finality=cf.Confirmations(1), compensate=_burner(token, ev))
        await ctx.step("credit-ledger", _ledger_down, retry=cf.Retry(max_attempts=1))

    @app.workflow("mint-slowly")
    async def mint_slowly(ctx: cf.Context, ev: dict[str, Any]) -> None:
        """Mint to ``ev["to"]`` with four confirmations: long enough on chain to be
        cancelled while signed, sent or included, its compensation burning the mint."""
        await ctx.submit("mint", chain=CHAIN, tx=token.functions.mint(ev["to"], ev["amount"]),
                         idempotency_key=ev["id"], finality=cf.Confirmations(4), compensate=_burner(token, ev))

    @app.workflow("mint-beside-a-failure")
    async def mint_beside_a_failure(ctx: cf.Context, ev: dict[str, Any]) -> None:
        """A mint in one branch, a ledger step failing for good in the other once the
        mint is on the wire: the failure ends the run while the mint is unsettled."""

        async def mint() -> None:
            await ctx.submit("mint", chain=CHAIN, tx=token.functions.mint(ev["to"], ev["amount"]),
                             idempotency_key=ev["id"], finality=cf.Confirmations(4), compensate=_burner(token, ev))

        async def ledger() -> None:
            await ctx.sleep("mint-on-the-wire", 1.5)
            await ctx.step("credit-ledger", _ledger_down, retry=cf.Retry(max_attempts=1))

        await ctx.gather(mint(), ledger())

    return app


def _burner(token: Any, ev: dict[str, Any]) -> Any:
    """The compensation of a mint of ``ev``: burn it, through the exactly-once path."""

    async def burn_minted(ctx: cf.Context, receipt: cf.Receipt) -> dict[str, Any]:
        r = await ctx.submit("burn", chain=CHAIN, tx=token.functions.burn(ev["to"], ev["amount"]),
                             finality=cf.Confirmations(1))
        return {"burn": r.tx_hash, "mint": receipt.tx_hash}

    return burn_minted


def _ledger_down() -> None:
    raise RuntimeError("ledger account closed")


def _install_crash(spec: str) -> None:
    phase, _, nth = spec.partition(":")
    limit = int(nth or 1)
    seen = {"n": 0}

    def maybe_die() -> None:
        seen["n"] += 1
        if seen["n"] >= limit:
            os.kill(os.getpid(), signal.SIGKILL)

    from adapters.evm import chain as evm_chain
    from chainflow.chain import chainstore, submission
    from chainflow.chain.adapter import SignedTx
    from chainflow.storage import limits

    if phase.startswith("burn-"):  # only a compensation's submission, whose key is derived
        phase = phase.removeprefix("burn-")
        if phase not in ("signed", "broadcast", "final"):
            raise SystemExit(f"unknown crash phase burn-{phase!r}")

        def is_burn(sub: Any) -> bool:
            return str(sub.idempotency_key).startswith(limits.COMPENSATION_PREFIX)
    else:
        def is_burn(sub: Any) -> bool:
            return True

    if phase == "allocated":  # nonce committed and bound to the key, nothing signed yet
        sign = evm_chain.EvmChain.sign

        async def die_before_signing(self: EvmChain, request: dict[str, Any], nonce: int,
                                     fees: dict[str, int] | None) -> SignedTx:
            maybe_die()
            return await sign(self, request, nonce, fees)

        evm_chain.EvmChain.sign = die_before_signing  # type: ignore[method-assign]
    elif phase in ("signed", "broadcast"):
        original = submission.broadcast_latest

        async def broadcast(db: Any, clock: Any, ctx: Any, adapter: Any, sub: Any, *rest: Any) -> None:
            if not is_burn(sub):
                pass
            elif phase == "signed":  # signed bytes committed, nothing sent
                maybe_die()
            else:  # the node has the tx, our record of the broadcast does not
                attempts = await db.atx(chainstore.attempts_of, sub.id)
                if attempts:
                    await adapter.broadcast(attempts[-1].raw)
                    maybe_die()
            await original(db, clock, ctx, adapter, sub, *rest)

        submission.broadcast_latest = broadcast  # type: ignore[assignment]
    elif phase == "final":  # included and final, the step's journal write not committed
        lock = submission._lock_final

        def die_before_journal(sub_id: int) -> Any:
            def then(sub: Any) -> Any:  # locked and final, inside the journal's transaction
                if is_burn(sub):
                    maybe_die()
                return sub

            return lock(sub_id).then(then)

        submission._lock_final = die_before_journal
    else:
        raise SystemExit(f"unknown crash phase {phase!r}")


def main() -> None:
    env = os.environ
    if env.get("CF_CRASH_AT"):
        _install_crash(env["CF_CRASH_AT"])
    app = build(env["CF_URL"], env["CF_RPC"], env["CF_TOKEN"], env["CF_KEY"])
    app.run_worker(concurrency=int(env.get("CF_CONCURRENCY", "32")), worker_id=env.get("CF_WORKER"))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main()
