"""Amounts as integer satoshis, end to end.

Bitcoin Core speaks BTC as decimal JSON numbers (parsed as ``Decimal`` by the RPC
client); the engine journals ints.  ``satoshis`` converts exactly or refuses, and
``payment_amount`` is the one gate user amounts pass: an int, nothing that merely looks
like one, because ``0.1 + 0.2`` BTC is not a payment anyone meant.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

COIN = 100_000_000


def satoshis(btc: Any, what: str) -> int:
    """``btc`` (a node's ``Decimal`` or int amount in BTC, or BTC/kvB) in satoshis;
    ``ValueError`` naming ``what`` when it is not a whole number of satoshis."""
    if isinstance(btc, bool) or not isinstance(btc, (Decimal, int)):
        raise ValueError(f"{what}: expected a decimal amount from the node, got {type(btc).__name__} {btc!r}")
    sats = Decimal(btc) * COIN
    if sats != sats.to_integral_value():
        raise ValueError(f"{what}: {btc} BTC is not a whole number of satoshis")
    return int(sats)


def payment_amount(value: Any, what: str) -> int:
    """A user's amount: an int of satoshis, or a ``ValueError`` saying why not."""
    if isinstance(value, bool) or not isinstance(value, int):
        kind = type(value).__name__
        hint = " (give satoshis, e.g. 150_000 for 0.0015 BTC)" if isinstance(value, (float, Decimal, str)) else ""
        raise ValueError(f"{what} must be an int of satoshis, got {kind} {value!r}: amounts are integer "
                         f"satoshis, never floats, Decimals, strings or booleans{hint}")
    return value
