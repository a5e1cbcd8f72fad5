"""Choosing coins for a payment, and building and signing the transaction (BIP143).

Every version of an intent spends *all* the outpoints reserved for it, so coin
selection happens once (``select``) and must already leave room for the largest fee
the intent may ever pay: the fee at ``max_feerate`` for the transaction those coins
make.  Signing (``sign``) then only prices: inputs in outpoint order, outputs in
payment order with the change last, change dropped into the fee when it would be
dust.  python-bitcoinlib serializes and computes the BIP143 signature hash; the
signature itself comes from the ``Keyring``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bitcoin.core import COutPoint, CMutableTransaction, CMutableTxIn, CMutableTxOut, CTxInWitness, CTxWitness, b2lx, lx
from bitcoin.core.script import SIGHASH_ALL, SIGVERSION_WITNESS_V0, CScript, CScriptWitness, SignatureHash

from chainflow.chain.adapter import Coin, SignedTx, TxRejected

from .addresses import dust_limit, p2pkh_script
from .encoding import hash160
from .fees import fee_for, vsize
from .networks import Network
from .wallet import Keyring

RBF_SEQUENCE = 0xFFFFFFFD  # BIP125: replaceable, no relative lock time
TX_VERSION = 2


@dataclass(frozen=True)
class Prevout:
    """An input being spent: where it is, its value and the script it pays."""

    outpoint: str
    value: int
    script: bytes


def parse_outpoint(outpoint: str) -> tuple[str, int]:
    """("txid", index) of "txid:index"; ``ValueError`` naming it when malformed."""
    txid, sep, index = outpoint.partition(":") if isinstance(outpoint, str) else ("", "", "")
    if not sep or len(txid) != 64 or not index.isdigit() or any(c not in "0123456789abcdef" for c in txid):
        raise ValueError(f"outpoint must be '<64 lowercase hex txid>:<output index>', got {outpoint!r}")
    return txid, int(index)


def select(payments: Sequence[tuple[bytes, int]], available: Sequence[Coin], change_script: bytes,
           max_feerate: int) -> list[Coin]:
    """The largest coins first (ties by outpoint) until they cover the payments and
    the fee at ``max_feerate`` for the transaction they make with a change output;
    ``TxRejected`` (not a revert) when all of ``available`` cannot."""
    scripts = [s for s, _ in payments] + [change_script]
    paying = sum(v for _, v in payments)
    chosen: list[Coin] = []
    held = 0
    for coin in sorted(available, key=lambda c: (-c.value, parse_outpoint(c.outpoint))):
        chosen.append(coin)
        held += coin.value
        if held >= paying + fee_for(max_feerate, vsize(len(chosen), scripts)):
            return chosen
    budget = fee_for(max_feerate, vsize(max(len(chosen), 1), scripts))
    raise TxRejected(f"insufficient funds: need {paying + budget} sats (payments {paying} + fee budget {budget} at "
                     f"max_feerate {max_feerate} sat/kvB), unreserved coins hold {held}", reverted=False)


def p2wpkh_digest(tx: CMutableTransaction, index: int, value: int, pubkey: bytes) -> bytes:
    """BIP143's signature hash (SIGHASH_ALL) of input ``index`` spending ``value``
    from the P2WPKH output of ``pubkey``: its script code is the P2PKH script."""
    return bytes(SignatureHash(CScript(p2pkh_script(hash160(pubkey))), tx, index, SIGHASH_ALL, amount=value,
                               sigversion=SIGVERSION_WITNESS_V0))


def sign(keyring: Keyring, network: Network, inputs: Sequence[Prevout], payments: Sequence[tuple[bytes, int]],
         feerate: int) -> SignedTx:
    """Spend every one of ``inputs`` to ``payments`` (then change to the wallet's
    primary address) at ``feerate`` sat/kvB; ``TxRejected`` when they cannot pay it."""
    inputs = sorted(inputs, key=lambda p: parse_outpoint(p.outpoint))
    change_script = keyring.scripts[0]
    held, paying = sum(p.value for p in inputs), sum(v for _, v in payments)
    outputs = list(payments)
    fee = fee_for(feerate, vsize(len(inputs), [s for s, _ in payments] + [change_script]))
    change = held - paying - fee
    if change >= dust_limit(change_script, network):
        outputs.append((change_script, change))
    else:  # no change output: whatever is left over goes to the fee
        fee = fee_for(feerate, vsize(len(inputs), [s for s, _ in payments]))
        if held - paying < fee:
            raise TxRejected(f"the reserved inputs hold {held} sats, which cannot pay {paying} plus a fee of {fee} "
                             f"at {feerate} sat/kvB", reverted=False)
        fee = held - paying
    tx = CMutableTransaction(
        [CMutableTxIn(COutPoint(lx(txid), n), nSequence=RBF_SEQUENCE)
         for txid, n in (parse_outpoint(p.outpoint) for p in inputs)],
        [CMutableTxOut(value, CScript(script)) for script, value in outputs],
        nLockTime=0, nVersion=TX_VERSION)
    witnesses = []
    for i, prev in enumerate(inputs):
        index = keyring.index_of(prev.script)
        if index is None:
            raise TxRejected(f"input {prev.outpoint} does not pay one of the wallet's addresses", reverted=False)
        pubkey = keyring.pubkeys[index]
        digest = p2wpkh_digest(tx, i, prev.value, pubkey)
        signature = keyring.sign(index, digest) + bytes([SIGHASH_ALL])
        witnesses.append(CTxInWitness(CScriptWitness([signature, pubkey])))
    tx.wit = CTxWitness(witnesses)
    return SignedTx(tx.serialize(), b2lx(tx.GetTxid()), {"feerate": feerate, "fee": fee})
