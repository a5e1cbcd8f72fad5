"""``ctx.submit``: exactly-once on-chain submission keyed by an idempotency key.

The protocol (docs/submission.md has the state diagram):

  intent ──estimate──▶ allocated(domain) ──sign+commit──▶ signed ──broadcast──▶ broadcast
     │                      │                                                       │
     └─ revert: step fails  └─ permanent sign failure: free the domain              ▼
                                                        included ──policy holds──▶ final

The conflict domain (``domain.py``) is a nonce on account chains and a set of reserved
outpoints on UTXO chains; every signed version of the intent is a candidate
(``candidates.py``).  Every arrow that leaves the process (broadcast) happens only
after the state it depends on is committed, so a crash anywhere leads to
re-broadcasting the *same* signed bytes, never to a second domain.  After the first broadcast the run parks and
holds no worker slot; the chain's tracker follows heads, re-broadcasts, bumps fees and
wakes the run once the finality policy holds.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from ..clock import Clock
from ..errors import (
    ConfigurationError,
    LeaseLostError,
    NonDeterminismError,
    RunCancelled,
    StepError,
    SubmissionFailedError,
    TxRevertedError,
    error_parts,
    type_name,
)
from ..lograte import FailureLog
from ..retry import Retry, check_policy
from ..states import EntryState, SubmissionState
from ..storage import codec, limits, store
from ..storage.database import Database
from . import chainstore, finality
from .adapter import ChainAdapter, EndpointError, Receipt, SignedTx, TxRejected
from .candidates import broadcast_latest  # a module global: the crash tests wrap it here
from .domain import ConflictDomain, domain_for
from .finality import policy_of  # by name: ``submit``'s argument shadows the module
from .scope import Landed, RunScope
from .tracker_config import TrackerConfig

log = logging.getLogger("chainflow.submission")

# failures that end the step for good; anything else from the chain side is retried
TERMINAL = (TxRevertedError, SubmissionFailedError, ValueError, ConfigurationError)
# the engine's own control flow, never mistaken for a node failure
CONTROL = (LeaseLostError, RunCancelled, NonDeterminismError, asyncio.CancelledError)
# node/network failures during submission: patient, since a payment must not fail
# because the RPC node blinked
SUBMIT_RETRY = Retry(max_attempts=20, backoff="exponential", initial=1.0, max_delay=60.0)
# attempts before a node's redirect or 4xx fails the step: enough to ride out a proxy
# misrouting for a moment, few enough that a wrong URL fails in seconds, not hours
ENDPOINT_ATTEMPTS = 3
# one for every run: a node outage fails many submissions the same way at once
_failures = FailureLog(log, "submission")


def receipt_from(data: dict[str, Any]) -> Receipt:
    return Receipt.from_dict(data)


class _Unsettled(Exception):
    """The submission stopped being final between the check and the journal write."""


def _final_receipt(sub: sa.Row[Any], label: str) -> Receipt:
    """A final submission's receipt; a reverted one raises (the step fails)."""
    receipt = receipt_from(codec.loads(sub.receipt))
    if not receipt.succeeded:
        raise TxRevertedError(label, receipt.revert_reason, receipt.tx_hash)
    return receipt


def _lock_final(sub_id: int) -> store.Query:
    """The submission locked (``chainstore.locked``), refused unless it is final."""
    def final(sub: sa.Row[Any] | None) -> sa.Row[Any]:
        if sub is None or sub.state != SubmissionState.FINAL:
            raise _Unsettled(sub_id)
        return sub

    return chainstore.locked(sub_id).then(final)


class Submitter:
    """The submission protocol for one app's chains, over its database."""

    def __init__(self, db: Database, chains: dict[str, ChainAdapter], clock: Clock, tracker: TrackerConfig) -> None:
        self.db, self.chains, self.clock, self.tracker = db, chains, clock, tracker
        self._domains: dict[str, ConflictDomain] = {}

    def domain(self, adapter: ChainAdapter) -> ConflictDomain:
        if adapter.name not in self._domains:
            self._domains[adapter.name] = domain_for(adapter, self.db, self.clock)
        return self._domains[adapter.name]

    def adapter(self, chain: str) -> ChainAdapter:
        try:
            return self.chains[chain]
        except KeyError:
            raise ConfigurationError(
                f"no chain named {chain!r} is configured (known: {sorted(self.chains)})"
            ) from None

    async def submit(
        self, ctx: RunScope, name: str, *, chain: str, tx: Any, idempotency_key: str,
        finality: Any = None, compensate: Callable[[Any], Any] | None = None, retry: Retry | None = None,
    ) -> Receipt:
        # before the slot: a bad key or name is refused before anything is journaled
        limits.text(idempotency_key, f"idempotency_key of submit {name!r}", limits.IDEMPOTENCY_KEY_LENGTH)
        policy = policy_of(finality, f"submit {name!r}")
        check_policy(retry, f"retry of submit {name!r}")
        slot = ctx.slot(name, "submit")
        label = slot.label
        if len(label) > limits.SUBMISSION_LABEL_LENGTH:
            raise ValueError(f"submit label {label[:60]!r}… (branch path and name) is {len(label)} characters "
                             f"long, the limit is {limits.SUBMISSION_LABEL_LENGTH}")
        if slot.entry is not None:
            if slot.entry.status != EntryState.OK:
                etype, message = error_parts(slot.entry.error)
                raise StepError(label, etype, message, slot.entry.attempts)
            receipt = receipt_from(codec.loads(slot.entry.output))
        else:
            try:
                receipt = await self._submit_new(ctx, slot, chain, tx, idempotency_key, policy,
                                                 retry or SUBMIT_RETRY)
            except (RunCancelled, asyncio.CancelledError):
                # the run stops (cancel, timeout, a failed sibling) with the payment it
                # opened perhaps on the wire: nothing can unsend it, so its undo waits
                # for it to settle and runs only if it landed
                if compensate is not None:
                    ctx.register_compensation(slot, compensate, None, retry or ctx.default_retry,
                                              origin=self._origin(chain, idempotency_key),
                                              settle=functools.partial(self._landed, ctx, chain, idempotency_key,
                                                                       label))
                raise
        if compensate is not None:
            ctx.register_compensation(slot, compensate, receipt, retry or ctx.default_retry,
                                      origin=self._origin(chain, idempotency_key))
        return receipt

    def _origin(self, chain: str, key: str) -> str:
        """The intent a submit's undo compensates, not the run: two runs sharing a key
        share one submission, and so one undo of it (its key derived from this origin)."""
        return f"submit\x1f{chain}\x1f{self.adapter(chain).sender()}\x1f{key}"

    async def _landed(self, ctx: RunScope, chain: str, key: str, label: str) -> Landed | None:
        """The receipt of the payment an interrupted submit of this run waited on, once it
        is final; None when none of it can land or it is not this run's to undo: another
        run waiting on it still wants it (its opener or a run sharing its key: the last
        of them to give it up undoes it, ``chainstore.give_up``), never signed (the
        tracker frees its conflict domain once its runs have ended), withdrawn from the
        batcher's queue, failed or reverted."""
        sender, run_id, now = self.adapter(chain).sender(), ctx.run_id, ctx.clock.time()

        def decide(conn: sa.Connection) -> tuple[sa.Row[Any] | None, bool]:
            found = chainstore.by_key(conn, chain, sender, key)
            if found is None:
                return None, False
            found = chainstore.locked(int(found.id))(conn)
            if chainstore.give_up(conn, found, run_id, now):
                return None, False
            withdrawn = chainstore.withdraw_queued(conn, int(found.id), "its run was stopped before the payout "
                                                   "was batched", now)
            return found, withdrawn

        ((sub, withdrawn),) = await ctx.commit(decide)
        if sub is None or withdrawn:
            return None
        sub_id = int(sub.id)
        if sub.state in (SubmissionState.INTENT, SubmissionState.ALLOCATED) and sub.batch_id is None:
            return None
        try:
            return Landed(await self._await_final(ctx, sub_id, label, poll=self._poll(sub, run_id)))
        except (SubmissionFailedError, TxRevertedError):
            return None

    def _poll(self, sub: sa.Row[Any], run_id: str) -> float | None:
        """The tracker signals the run that opened an intent; a run sharing its key
        looks again every poll interval instead."""
        return None if sub.run_id == run_id else max(1.0, self.tracker.poll_interval)

    async def _submit_new(self, ctx: RunScope, slot: store.Slot, chain: str, tx: Any, key: str,
                          policy: finality.Finality,
                          retry: Retry) -> Receipt:
        ctx.refuse_new_work()
        label = slot.label
        started = ctx.clock.time()
        try:
            adapter = self.adapter(chain)
            request = adapter.prepare(tx)
            sub, opened, first = await self._resilient(ctx, slot, retry, self._run_protocol, ctx, slot, adapter,
                                                       request, key, policy)
            sub_id, run_id, event = int(sub.id), ctx.run_id, chainstore.event_name(int(sub.id))
            # the journal row spans the whole submit, finality wait included: an earlier
            # execution (parked on confirmations, or on another worker) opened the intent
            started = min(started, opened)
            tries = len(ctx.tries_of(slot)) + 1  # the attempt that got through
            # a run resumed by the settlement finds the intent final as it opens it: no
            # look of its own, and the signal that woke it is consumed with the journal row
            known = sub if sub.state == SubmissionState.FINAL else None
            poll = self._poll(sub, run_id)
            while True:
                receipt = _final_receipt(known, label) if known is not None else \
                    await self._await_final(ctx, sub_id, label, parked=first, poll=poll)
                first, known = False, None
                text, value = codec.roundtrip(receipt.to_dict(), what=f"receipt of step {label!r}")
                finished = ctx.clock.time()
                entry = ctx.entry_op(slot, "submit", EntryState.OK, text, None, tries, started, finished)

                try:
                    # journaled only while still final: a reorg racing this commit either
                    # lands first (we wait again) or sees the entry and rolls it back
                    await ctx.commit(_lock_final(sub_id), store.consume_signals(run_id, event), entry)
                except _Unsettled:
                    continue
                ctx.announce("step_completed", label, tries, started, finished)
                return receipt_from(value)
        except TERMINAL as exc:
            tries = len(ctx.tries_of(slot)) + 1
            await ctx.fail(slot, "submit", exc, tries, started)
            raise StepError(label, type_name(exc), str(exc), tries) from exc

    async def _resilient(self, ctx: RunScope, slot: store.Slot, retry: Retry, fn: Callable[..., Any],
                         *args: Any) -> Any:
        """Run a resumable protocol phase, retrying node and network failures.

        Every phase picks up from the submission's committed state, so running it again
        after a timeout or a refused connection can only re-broadcast the same bytes.
        Attempts and their backoff are the slot's journaled ones: a retry that parks
        the run (any delay over the worker's inline wait) resumes the policy where it
        was, not at attempt 1 with a one-second delay."""
        tries = ctx.tries_of(slot)
        exc: Exception
        while True:
            await ctx.back_off(tries)
            started = ctx.clock.time()
            # chain I/O in flight is work in progress: without this, a sibling branch
            # parking meanwhile makes the run look fully parked, and the executor would
            # unwind (suspend) it mid-RPC, leaving the submission unsent until some
            # other wake-up (e.g. the sibling's signal) arrives
            ctx.busy(+1)
            try:
                result = await fn(*args)
            except EndpointError as failure:  # before TERMINAL, which it is a kind of
                exc, limit = failure, min(retry.max_attempts, ENDPOINT_ATTEMPTS)
            except (*TERMINAL, *CONTROL):
                raise
            except Exception as failure:  # noqa: BLE001 - a node or network failure, not the workflow's fault
                exc, limit = failure, retry.max_attempts
            else:
                _failures.recovered()
                return result
            finally:
                ctx.busy(-1)
            attempt, label = len(tries) + 1, slot.label
            if attempt >= limit:
                raise SubmissionFailedError(label, f"gave up after {attempt} attempt(s): {type(exc).__name__}: "
                                                   f"{exc}") from exc
            now, delay = ctx.clock.time(), retry.delay(attempt)
            await ctx.record_attempt(slot, tries, exc, started, now, now + delay)
            _failures.failed(exc, f"failed (step {label}, attempt {attempt}, next in {delay:.1f}s)", logging.WARNING)

    async def _run_protocol(self, ctx: RunScope, slot: store.Slot, adapter: ChainAdapter, request: dict[str, Any],
                            key: str, policy: finality.Finality) -> tuple[sa.Row[Any], float, bool]:
        """Open (or find) the intent and carry it as far as this process can take it;
        returns it as last read, when it was opened, and whether this call signed and
        sent its first version."""
        label = slot.label
        now = ctx.clock.time()
        sender = adapter.sender()
        request_text = codec.dumps(request, what=f"transaction of step {label!r}")
        run_id = ctx.run_id
        step = f"{slot.branch}\x1f{slot.key}"
        window = self.tracker.window

        def admit() -> None:
            # only a new intent is held to today's rules: one already recorded may hold
            # a nonce or be on the wire, and the tracker keeps the headers it still needs
            finality.require_supported(policy, adapter.finality_kinds, adapter.name, f"submit {label!r}")
            finality.require_window(policy, window, f"submit {label!r}")

        fields: dict[str, Any] = dict(chain=adapter.name, sender=sender, key=key, run_id=run_id, step=step,
                                      request=request_text, finality=json.dumps(policy.to_dict()), now=now,
                                      admit=admit)
        (sub,) = await ctx.commit(chainstore.opening(self.db.engine.dialect.name, **fields))
        if sub is None:  # raced by another run's creation of the key: look again
            (sub,) = await ctx.commit(lambda conn: chainstore.intent_by_lookup(conn, **fields))
        # an intent another run opened under the same key is not this run's wait, but
        # its receipt will be this run's: a reorg of it rolls this run back too
        sub_id, opened = int(sub.id), float(sub.created_at) if sub.run_id == run_id else now
        if sub.run_id != run_id:
            await ctx.commit(lambda conn: chainstore.share(conn, sub_id, run_id, step, now))
        domain = self.domain(adapter)
        if sub.state == SubmissionState.INTENT:
            try:
                request = await adapter.estimate(request)
            except TxRejected as exc:
                # a revert is the contract's refusal; anything else (the sender cannot pay)
                # fails like a UTXO intent without enough coins: nothing is bound yet
                if exc.reverted:
                    raise TxRevertedError(label, exc.reason) from None
                raise SubmissionFailedError(label, exc.reason) from None
            if adapter.name in self.tracker.batching:  # the chain's batcher takes it from here
                text = codec.dumps(request)
                await ctx.commit(lambda conn: chainstore.queue(conn, sub_id, text, ctx.clock.time()))
                return sub, opened, False
            try:
                sub = await domain.allocate(ctx.commit, sub_id, sender, request, ctx.clock.time())
            except TxRejected as exc:  # e.g. not enough unreserved coins: nothing was reserved
                raise SubmissionFailedError(label, exc.reason) from None
        if sub.state == SubmissionState.QUEUED or sub.batch_id is not None:
            return sub, opened, False  # paid by a batch: signed and sent by the batcher, settled by the tracker
        signed = None
        if sub.state == SubmissionState.ALLOCATED:
            sub, signed = await self._sign_first(ctx, adapter, domain, sub, label)
        if sub.state in (SubmissionState.SIGNED, SubmissionState.BROADCAST):
            await broadcast_latest(self.db, self.clock, ctx, adapter, sub, signed)
            return sub, opened, signed is not None
        return sub, opened, False

    async def _sign_first(self, ctx: RunScope, adapter: ChainAdapter, domain: ConflictDomain, sub: sa.Row[Any],
                          label: str) -> tuple[sa.Row[Any], SignedTx | None]:
        """Sign the first version and commit its bytes; the submission as it is then,
        and the version when it is the newest (the submission is signed)."""
        request = codec.loads(sub.request)
        try:
            signed = await adapter.sign(request, await domain.bound(sub), None)
        except TxRejected as exc:
            # the domain is the intent's forever but no version can ever use it: free it
            await domain.fail_unsigned(ctx.commit, sub, exc.reason, ctx.hold_lease)
            raise SubmissionFailedError(label, f"signing failed permanently: {exc.reason}") from None
        now = ctx.clock.time()
        _, row = await ctx.commit(chainstore.attempt(sub.id, adapter.name, signed, now),
                                  chainstore.mark_signed(sub.id, now))
        if row is None:  # signed by an earlier version meanwhile: as it is now
            (row,) = await ctx.commit(lambda conn: chainstore.get(conn, sub.id))
        return row, signed if row.state == SubmissionState.SIGNED else None

    async def _await_final(self, ctx: RunScope, sub_id: int, label: str, *, parked: bool = False,
                           poll: float | None = None) -> Receipt:
        """Park (no worker slot) until the tracker settles the submission.

        ``parked``: park before the first look.  Right after its first version was
        sent, a submission is not final yet, and no signal for it can be older than
        that version: if the tracker settles it meanwhile, its signal stays unconsumed
        and wakes the run as it parks (``store.suspend_run``).  ``poll``: seconds
        between looks of a run no signal will wake (it shares another run's intent)."""
        run_id, event = ctx.run_id, chainstore.event_name(sub_id)

        def until() -> float | None:
            return None if poll is None else ctx.clock.time() + poll

        if parked:
            await ctx.park(until(), event)
        while True:
            def check(conn: sa.Connection) -> sa.Row[Any]:
                store.consume_signals(run_id, event)(conn)
                return chainstore.get(conn, sub_id)

            (sub,) = await ctx.commit(check)
            if sub.state == SubmissionState.FINAL:
                return _final_receipt(sub, label)
            if sub.state == SubmissionState.FAILED:
                raise SubmissionFailedError(label, sub.error or "the transaction can no longer be included")
            await ctx.park(until(), event)
