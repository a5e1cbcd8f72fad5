"""Fee rates in satoshi per 1000 virtual bytes (sat/kvB, Bitcoin Core's unit), the
size of the transactions this adapter signs, and what a replacement must pay.

Sizes are computed before signing, with every signature at its largest (72 bytes with
its hash type, low-S), so the fee of a version is known before its bytes are: a
signature one byte shorter only raises the real fee rate a little.  Every version of
an intent spends the same inputs and pays the same outputs, so its size is the same
and a higher fee rate is a higher absolute fee: BIP125's rules 3, 4 and 6 then hold
as soon as the rate rises by the node's incremental relay fee rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from chainflow.chain.adapter import TxRejected

from .values import satoshis

# weight units: version + locktime (4 each) and the segwit marker and flag
_TX_OVERHEAD_WEIGHT = (4 + 4) * 4 + 2
# a P2WPKH input: outpoint, empty scriptSig, sequence; witness: item count, a DER
# signature of at most 72 bytes with its hash type, a 33-byte compressed key
P2WPKH_INPUT_WEIGHT = (32 + 4 + 1 + 4) * 4 + (1 + 1 + 72 + 1 + 33)


def _compact_size_len(n: int) -> int:
    return 1 if n < 0xFD else 3 if n <= 0xFFFF else 5


def vsize(inputs: int, output_scripts: Sequence[bytes]) -> int:
    """Virtual size of a transaction spending ``inputs`` P2WPKH outputs to outputs
    with these scripts (an upper bound: the largest signatures)."""
    outputs = sum(8 + _compact_size_len(len(s)) + len(s) for s in output_scripts)
    weight = (_TX_OVERHEAD_WEIGHT + (_compact_size_len(inputs) + _compact_size_len(len(output_scripts)) + outputs) * 4
              + inputs * P2WPKH_INPUT_WEIGHT)
    return math.ceil(weight / 4)


def fee_for(feerate: int, size: int) -> int:
    """The fee paying ``feerate`` sat/kvB for ``size`` vbytes, rounded up."""
    return -(-feerate * size // 1000)


def from_node(answer: Any) -> int | None:
    """The fee rate of an ``estimatesmartfee`` answer (BTC/kvB as ``Decimal``) in
    sat/kvB; None when the node has no estimate (regtest never has one)."""
    rate = answer.get("feerate") if isinstance(answer, dict) else None
    if not isinstance(rate, (Decimal, int)) or isinstance(rate, bool) or rate <= 0:
        return None
    return satoshis(rate, "estimatesmartfee feerate")


def bump(feerate: int, factor: float, *, incremental: int, cap: int) -> int:
    """The fee rate of a replacement: ``factor`` times higher and by at least the
    incremental relay fee rate (BIP125), at most ``cap``; ``TxRejected`` (not a revert)
    when the cap leaves no room for a valid replacement."""
    wanted = max(math.ceil(feerate * factor), feerate + incremental)
    raised = min(wanted, cap)
    if raised < feerate + incremental:
        raise TxRejected(f"fee budget exhausted: the fee rate is {feerate} sat/kvB and max_feerate is {cap} sat/kvB, "
                         f"which leaves no room for a replacement (it must add at least {incremental} sat/kvB)",
                         reverted=False)
    return raised
