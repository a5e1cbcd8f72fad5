"""What Bitcoin Core's answer to ``sendrawtransaction`` means for the engine.

Core (and its forks: Litecoin Core 0.21 answers alike) reports a refused transaction
as an RPC error whose message is the mempool's reject reason ("txn-mempool-conflict",
"insufficient fee, rejecting replacement …") or, for a few cases, a sentence
("Transaction already in block chain", "Missing inputs").  The code tells some apart
(-27 already in the chain, -25 a verify error such as missing inputs) but not the fee
reasons, so the message is read too.  Bytes already in the mempool are accepted
silently by Core; the adapter asks the mempool first to tell those apart.
"""

from __future__ import annotations

from chainflow.chain.adapter import BroadcastOutcome

RPC_VERIFY_ALREADY_IN_CHAIN = -27

_RULES: list[tuple[BroadcastOutcome, tuple[str, ...]]] = [
    (BroadcastOutcome.ALREADY_KNOWN, (
        "transaction already in block chain",  # -27: an output of it is unspent in the chain
        "txn-already-in-mempool",
        "txn-already-known",  # its outputs are in the node's coins cache
    )),
    (BroadcastOutcome.SPENT, (
        "bad-txns-inputs-missingorspent",  # an input is spent in the chain, or never existed
        "missing inputs",  # older wording of the same
        "missingorspent",
    )),
    (BroadcastOutcome.UNDERPRICED, (
        "insufficient fee",  # BIP125: the replacement does not pay enough more
        "min relay fee not met",
        "mempool min fee not met",  # the mempool is full and its floor has risen
        "mempool full",
    )),
]
# "txn-mempool-conflict": a conflicting mempool transaction that does not signal
# replaceability.  Not one of ours (every version signals BIP125), and no fee replaces
# it: REJECTED, so the tracker re-broadcasts as it is instead of bumping towards
# max_feerate; if that spend is mined, the intent fails as spent by it.


def classify(code: int, message: str) -> BroadcastOutcome:
    """Outcome of a node's refusal; REJECTED (with the node's message kept by the
    caller) when nothing more specific fits."""
    if code == RPC_VERIFY_ALREADY_IN_CHAIN:
        return BroadcastOutcome.ALREADY_KNOWN
    text = message.lower()
    for outcome, needles in _RULES:
        if any(needle in text for needle in needles):
            return outcome
    return BroadcastOutcome.REJECTED
