"""Render py-evm objects in geth's JSON-RPC wire format.

Written against py-evm objects rather than eth-tester's serializers because
those differ from real nodes in ways that matter to an indexer: per-receipt
(not per-block) log indices, a 32-byte-padded extraData, the fee cap instead
of the effective price as `gasPrice`, and no receipt `logsBloom`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import rlp
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

JsonDict = dict[str, Any]

_BLOOM_BYTES = 256
_EMPTY_ADDRESS = b""


def quantity(value: int) -> str:
    return hex(value)


def data(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def word(value: int) -> str:
    """32-byte big-endian hex, the wire form of topics and storage keys."""
    return "0x" + value.to_bytes(32, "big").hex()


def address(value: bytes) -> str | None:
    return None if value == _EMPTY_ADDRESS else to_checksum_address(value)


def bloom(value: int) -> str:
    return "0x" + value.to_bytes(_BLOOM_BYTES, "big").hex()


def tx_type(tx: Any) -> int:
    type_id = getattr(tx, "type_id", None)
    return 0 if type_id is None else int(type_id)


def effective_gas_price(tx: Any, base_fee: int) -> int:
    if tx_type(tx) >= 2:
        return int(min(tx.max_fee_per_gas, tx.max_priority_fee_per_gas + base_fee))
    return int(tx.gas_price)


def contract_address_for(tx: Any) -> bytes | None:
    """CREATE address of a deployment; None for calls (set even if the deployment failed, like geth)."""
    if tx.to != _EMPTY_ADDRESS:
        return None
    return keccak(rlp.encode([bytes(tx.sender), tx.nonce]))[12:]


def format_transaction(
    tx: Any,
    *,
    block_hash: bytes | None = None,
    block_number: int | None = None,
    index: int | None = None,
    base_fee: int | None = None,
) -> JsonDict:
    """A mined transaction when block data is given, a pending one otherwise."""
    kind = tx_type(tx)
    out: JsonDict = {
        "blockHash": data(block_hash) if block_hash is not None else None,
        "blockNumber": quantity(block_number) if block_number is not None else None,
        "transactionIndex": quantity(index) if index is not None else None,
        "hash": data(tx.hash),
        "from": to_checksum_address(tx.sender),
        "to": address(tx.to),
        "nonce": quantity(tx.nonce),
        "gas": quantity(tx.gas),
        "value": quantity(tx.value),
        "input": data(tx.data),
        "type": quantity(kind),
    }
    if kind >= 2:
        out["maxFeePerGas"] = quantity(tx.max_fee_per_gas)
        out["maxPriorityFeePerGas"] = quantity(tx.max_priority_fee_per_gas)
        mined = block_hash is not None and base_fee is not None
        out["gasPrice"] = quantity(
            effective_gas_price(tx, base_fee) if mined and base_fee is not None else tx.max_fee_per_gas
        )
    else:
        out["gasPrice"] = quantity(tx.gas_price)
    if kind >= 1:
        out["chainId"] = quantity(tx.chain_id)
        out["accessList"] = [
            {
                "address": to_checksum_address(entry.account),
                "storageKeys": [word(k) for k in entry.storage_keys],
            }
            for entry in (tx.access_list or ())
        ]
        out["yParity"] = quantity(tx.y_parity)
        out["v"] = quantity(tx.y_parity)
    else:
        if tx.chain_id is not None:
            out["chainId"] = quantity(tx.chain_id)
        out["v"] = quantity(tx.v)
    if kind == 4:
        out["authorizationList"] = [
            {
                "chainId": quantity(auth.chain_id),
                "address": to_checksum_address(auth.address),
                "nonce": quantity(auth.nonce),
                "yParity": quantity(auth.y_parity),
                "r": quantity(auth.r),
                "s": quantity(auth.s),
            }
            for auth in tx.authorization_list
        ]
    out["r"] = quantity(tx.r)
    out["s"] = quantity(tx.s)
    return out


def format_block(block: Any, *, full_transactions: bool, pending: bool = False) -> JsonDict:
    """Header fields per fork present; pending blocks have null hash/nonce like geth."""
    header = block.header
    base_fee = getattr(header, "base_fee_per_gas", None)
    if full_transactions:
        transactions: list[Any] = [
            format_transaction(
                tx,
                block_hash=None if pending else header.hash,
                block_number=None if pending else header.block_number,
                index=None if pending else i,
                base_fee=base_fee,
            )
            for i, tx in enumerate(block.transactions)
        ]
    else:
        transactions = [data(tx.hash) for tx in block.transactions]
    out: JsonDict = {
        "number": quantity(header.block_number),
        "hash": None if pending else data(header.hash),
        "parentHash": data(header.parent_hash),
        "nonce": None if pending else data(header.nonce),
        "sha3Uncles": data(header.uncles_hash),
        "logsBloom": bloom(header.bloom),
        "transactionsRoot": data(header.transaction_root),
        "stateRoot": data(header.state_root),
        "receiptsRoot": data(header.receipt_root),
        "miner": to_checksum_address(header.coinbase),
        "difficulty": quantity(header.difficulty),
        "totalDifficulty": quantity(0),
        "extraData": data(header.extra_data),
        "size": quantity(len(rlp.encode(block))),
        "gasLimit": quantity(header.gas_limit),
        "gasUsed": quantity(header.gas_used),
        "timestamp": quantity(header.timestamp),
        "mixHash": data(header.mix_hash),
        "transactions": transactions,
        "uncles": [],
    }
    if base_fee is not None:
        out["baseFeePerGas"] = quantity(base_fee)
    optional_fields: dict[str, tuple[str, Callable[[Any], str]]] = {
        "withdrawalsRoot": ("withdrawals_root", data),
        "blobGasUsed": ("blob_gas_used", quantity),
        "excessBlobGas": ("excess_blob_gas", quantity),
        "parentBeaconBlockRoot": ("parent_beacon_block_root", data),
        "requestsHash": ("requests_hash", data),
    }
    for key, (attr, render) in optional_fields.items():
        value = getattr(header, attr, None)
        if value is not None:
            out[key] = render(value)
    if hasattr(header, "withdrawals_root"):
        out["withdrawals"] = [
            {
                "index": quantity(w.index),
                "validatorIndex": quantity(w.validator_index),
                "address": to_checksum_address(w.address),
                "amount": quantity(w.amount),
            }
            for w in getattr(block, "withdrawals", ())
        ]
    return out


def format_logs_for_receipt(
    block: Any, tx: Any, tx_index: int, receipt: Any, first_log_index: int
) -> list[JsonDict]:
    header = block.header
    return [
        {
            "address": to_checksum_address(log.address),
            "topics": [word(topic) for topic in log.topics],
            "data": data(log.data),
            "blockNumber": quantity(header.block_number),
            "blockHash": data(header.hash),
            "blockTimestamp": quantity(header.timestamp),
            "transactionHash": data(tx.hash),
            "transactionIndex": quantity(tx_index),
            "logIndex": quantity(first_log_index + offset),
            "removed": False,
        }
        for offset, log in enumerate(receipt.logs)
    ]


def format_receipts(block: Any, receipts: list[Any]) -> list[JsonDict]:
    """All receipts of a block at once, because gasUsed and logIndex depend on predecessors."""
    header = block.header
    base_fee = getattr(header, "base_fee_per_gas", 0) or 0
    out: list[JsonDict] = []
    previous_cumulative = 0
    log_index = 0
    for index, (tx, receipt) in enumerate(zip(block.transactions, receipts, strict=True)):
        contract = contract_address_for(tx)
        out.append(
            {
                "transactionHash": data(tx.hash),
                "transactionIndex": quantity(index),
                "blockHash": data(header.hash),
                "blockNumber": quantity(header.block_number),
                "from": to_checksum_address(tx.sender),
                "to": address(tx.to),
                "cumulativeGasUsed": quantity(receipt.gas_used),
                "gasUsed": quantity(receipt.gas_used - previous_cumulative),
                "contractAddress": to_checksum_address(contract) if contract else None,
                "logs": format_logs_for_receipt(block, tx, index, receipt, log_index),
                "logsBloom": bloom(receipt.bloom),
                "status": quantity(1 if receipt.state_root == b"\x01" else 0),
                "effectiveGasPrice": quantity(effective_gas_price(tx, base_fee)),
                "type": quantity(tx_type(tx)),
            }
        )
        previous_cumulative = receipt.gas_used
        log_index += len(receipt.logs)
    return out
