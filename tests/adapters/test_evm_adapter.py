"""EvmChain against real nodes: the in-process EVM and anvil 1.x (see conftest)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from eth_account import Account
from web3 import EthereumTesterProvider
from web3.contract import Contract

from adapters.evm import ChainIdMismatch, EvmChain, EvmReceipt, LocalSigner, TxReverted
from chainflow.chain.adapter import (
    BroadcastOutcome,
    ChainAdapter,
    CoinSource,
    NonceSource,
    Receipt,
    SignedTx,
    TxRejected,
)
from chainflow.errors import ConfigurationError
from chainflow.storage import codec
from devnet import Anvil, load_token_artifact
from tests.conftest import require_anvil

from .conftest import TOKEN_CAP

pytestmark = pytest.mark.timeout(120)


async def mined(chain: EvmChain, tx_hash: str, timeout: float = 20.0) -> EvmReceipt:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        receipt = await chain.receipt(tx_hash)
        if receipt is not None:
            return receipt
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{tx_hash} not mined within {timeout}s")
        await asyncio.sleep(0.05)


async def signed_transfer(chain: EvmChain, to: str, value: int, *, nonce: int | None = None,
                          fees: dict[str, int] | None = None) -> SignedTx:
    request = await chain.estimate(chain.prepare({"to": to, "value": value}))
    if nonce is None:
        nonce = await chain.pending_nonce(chain.sender())
    return await chain.sign(request, nonce, fees)


def journal_roundtrip(value: Any) -> Any:
    """What the engine would read back after storing ``value`` (plain data only)."""
    return codec.roundtrip(value)[1]


async def test_is_a_chain_adapter(chain: EvmChain) -> None:
    assert isinstance(chain, ChainAdapter)


async def test_transfer_signs_broadcasts_and_reads_a_typed_receipt(net: Any, chain: EvmChain) -> None:
    bob = net.accounts()[1].address
    nonce = await chain.pending_nonce(chain.sender())
    assert await chain.latest_nonce(chain.sender()) == nonce
    signed = await signed_transfer(chain, bob, 12345, nonce=nonce)
    assert signed.tx_hash.startswith("0x") and signed.tx_hash == signed.tx_hash.lower() and len(signed.tx_hash) == 66
    assert all(type(v) is int for v in signed.fees.values())
    assert set(signed.fees) == {"max_fee_per_gas", "max_priority_fee_per_gas"}
    assert signed.fees["max_fee_per_gas"] >= signed.fees["max_priority_fee_per_gas"] > 0

    result = await chain.broadcast(signed.raw)
    assert result.outcome is BroadcastOutcome.ACCEPTED, result.detail
    receipt = await mined(chain, signed.tx_hash)
    assert EvmReceipt(**journal_roundtrip(dataclasses.asdict(receipt))) == receipt
    # the journal's form names the family, so a replay gets the EVM class back
    assert isinstance(receipt, EvmReceipt) and receipt.position is not None
    assert Receipt.from_dict(journal_roundtrip(receipt.to_dict())) == receipt
    legacy = {k: v for k, v in dataclasses.asdict(receipt).items() if k not in ("position", "extra")}
    assert Receipt.from_dict(journal_roundtrip(legacy)) == dataclasses.replace(receipt, position=None)
    assert isinstance(chain, NonceSource) and not isinstance(chain, CoinSource)
    assert receipt.succeeded and receipt.status == 1
    assert receipt.tx_hash == signed.tx_hash
    assert receipt.nonce == nonce
    assert receipt.gas_used == 21_000
    assert receipt.effective_fee > 0 and receipt.effective_fee % receipt.gas_used == 0
    assert receipt.logs == [] and receipt.revert_reason is None

    header = await chain.header_at(receipt.block_number)
    assert header is not None and header.hash == receipt.block_hash
    calls = chain.rpc.calls
    remembered = await chain.block_tx_hashes(receipt.block_hash)
    assert signed.tx_hash in remembered and chain.rpc.calls == calls  # known from the header's own answer
    fresh = EvmChain("fresh", net.rpc_url, chain.signer)
    assert await fresh.block_tx_hashes(receipt.block_hash) == remembered and fresh.rpc.calls == 1
    await fresh.aclose()
    assert await chain.in_mempool(signed.tx_hash) is False
    assert await chain.latest_nonce(chain.sender()) == nonce + 1


async def test_same_bytes_twice_is_already_known(net: Any, chain: EvmChain) -> None:
    net.set_automine(False)
    signed = await signed_transfer(chain, net.accounts()[1].address, 1)
    assert (await chain.broadcast(signed.raw)).outcome is BroadcastOutcome.ACCEPTED
    again = await chain.broadcast(signed.raw)
    assert again.outcome is BroadcastOutcome.ALREADY_KNOWN, again.detail
    assert await chain.in_mempool(signed.tx_hash) is True
    assert await chain.pending_nonce(chain.sender()) == await chain.latest_nonce(chain.sender()) + 1


async def test_spent_nonce_is_nonce_too_low(net: Any, chain: EvmChain) -> None:
    bob = net.accounts()[1].address
    first = await signed_transfer(chain, bob, 1)
    assert (await chain.broadcast(first.raw)).outcome is BroadcastOutcome.ACCEPTED
    receipt = await mined(chain, first.tx_hash)

    # other bytes on the spent nonce, and the very same bytes once mined (anvil no longer
    # says "already known" for a mined tx: both nodes answer "nonce too low")
    other = await signed_transfer(chain, bob, 2, nonce=receipt.nonce)
    assert (await chain.broadcast(other.raw)).outcome is BroadcastOutcome.NONCE_TOO_LOW
    assert (await chain.broadcast(first.raw)).outcome is BroadcastOutcome.NONCE_TOO_LOW


async def test_underpriced_replacement_then_fee_bump_is_accepted(net: Any, chain: EvmChain) -> None:
    net.set_automine(False)
    bob = net.accounts()[1].address
    original = await signed_transfer(chain, bob, 1)
    nonce = await chain.latest_nonce(chain.sender())
    assert (await chain.broadcast(original.raw)).outcome is BroadcastOutcome.ACCEPTED

    same_fees = await signed_transfer(chain, bob, 2, nonce=nonce, fees=original.fees)
    assert same_fees.fees == original.fees  # given fees are signed as-is
    refused = await chain.broadcast(same_fees.raw)
    assert refused.outcome is BroadcastOutcome.UNDERPRICED, refused.detail

    bumped_fees = chain.bump_fees(original.fees, 1.125)
    assert all(bumped_fees[k] >= original.fees[k] * 1.125 for k in original.fees)
    replacement = await chain.sign(await chain.estimate(chain.prepare({"to": bob, "value": 1})), nonce, bumped_fees)
    assert replacement.tx_hash != original.tx_hash and replacement.fees == bumped_fees
    accepted = await chain.broadcast(replacement.raw)
    assert accepted.outcome is BroadcastOutcome.ACCEPTED, accepted.detail
    assert await chain.in_mempool(replacement.tx_hash) is True
    assert await chain.in_mempool(original.tx_hash) is False

    net.mine(1)
    receipt = await mined(chain, replacement.tx_hash)
    assert receipt.nonce == nonce
    assert await chain.receipt(original.tx_hash) is None
    assert (await chain.broadcast(original.raw)).outcome is BroadcastOutcome.NONCE_TOO_LOW


async def test_dropped_tx_is_not_in_mempool_and_rebroadcast_restores_it(net: Any, chain: EvmChain) -> None:
    net.set_automine(False)
    signed = await signed_transfer(chain, net.accounts()[1].address, 1)
    await chain.broadcast(signed.raw)
    net.drop_tx(signed.tx_hash)
    assert await chain.in_mempool(signed.tx_hash) is False
    assert await chain.receipt(signed.tx_hash) is None
    assert (await chain.broadcast(signed.raw)).outcome is BroadcastOutcome.ACCEPTED
    assert await chain.in_mempool(signed.tx_hash) is True


async def test_rolled_back_tx_vanishes_from_the_node(net: Any, chain: EvmChain) -> None:
    """Both devnets (like anvil) drop a reorged-out tx instead of re-pooling it: the engine
    must re-broadcast its stored bytes."""
    signed = await signed_transfer(chain, net.accounts()[1].address, 1)
    await chain.broadcast(signed.raw)
    receipt = await mined(chain, signed.tx_hash)
    net.rollback(1)
    assert await chain.receipt(signed.tx_hash) is None
    assert await chain.in_mempool(signed.tx_hash) is False
    assert await chain.header_at(receipt.block_number) is None
    assert (await chain.broadcast(signed.raw)).outcome is BroadcastOutcome.ACCEPTED
    assert (await mined(chain, signed.tx_hash)).nonce == receipt.nonce


async def test_fee_cap_below_base_fee_is_underpriced(node_kind: str, net: Any, chain: EvmChain) -> None:
    if node_kind != "anvil":
        pytest.skip("the in-process pool admits fee caps below the base fee (it waits for them)")
    request = await chain.estimate(chain.prepare({"to": net.accounts()[1].address, "value": 1}))
    signed = await chain.sign(request, await chain.pending_nonce(chain.sender()),
                              {"max_fee_per_gas": 1, "max_priority_fee_per_gas": 1})
    result = await chain.broadcast(signed.raw)
    assert result.outcome is BroadcastOutcome.UNDERPRICED, result.detail


async def test_unfunded_sender_is_refused_as_unfunded_with_detail(net: Any) -> None:
    broke = EvmChain("devnet", net.rpc_url, LocalSigner.from_key(Account.create().key))
    try:
        request = broke.prepare({"to": net.accounts()[1].address, "value": 10**18, "gas": 21_000})
        signed = await broke.sign(request, 0, None)
        result = await broke.broadcast(signed.raw)
        assert result.outcome is BroadcastOutcome.UNFUNDED
        assert "insufficient funds" in result.detail.lower()
    finally:
        await broke.aclose()


async def test_a_transfer_above_the_balance_is_refused_at_estimation_on_every_node(net: Any, chain: EvmChain) -> None:
    """Geth (the in-process EVM answers with its words) refuses the estimate, anvil does
    not: the adapter refuses it alike, as no revert, before a nonce is bound."""
    balance = int(net.rpc("eth_getBalance", chain.sender(), "latest"), 16)
    request = chain.prepare({"to": net.accounts()[1].address, "value": balance + 1})
    with pytest.raises(TxRejected, match="(?i)insufficient funds") as refused:
        await chain.estimate(request)
    assert refused.value.reverted is False
    affordable = chain.prepare({"to": net.accounts()[1].address, "value": balance // 2})
    assert (await chain.estimate(affordable))["gas"] > 0


async def test_revert_at_estimation_carries_the_decoded_reason(
    net: Any, token: Contract, chain: EvmChain, outsider: EvmChain
) -> None:
    bob = net.accounts()[2].address
    with pytest.raises(TxReverted) as not_minter:
        await outsider.estimate(outsider.prepare(token.functions.mint(bob, 1)))
    assert isinstance(not_minter.value, TxRejected) and not_minter.value.reverted is True
    assert not_minter.value.reason == "only minter"
    assert not_minter.value.data is not None and not_minter.value.data.startswith("0x08c379a0")

    with pytest.raises(TxReverted, match="cap exceeded"):
        await chain.estimate(chain.prepare(token.functions.mint(bob, TOKEN_CAP + 1)))

    # sign() estimates too when the request has no gas yet
    with pytest.raises(TxReverted, match="only minter"):
        await outsider.sign(outsider.prepare(token.functions.mint(bob, 1)), 0, None)


async def test_mined_revert_reason_is_replayed_and_decoded(net: Any, token: Contract, outsider: EvmChain) -> None:
    request = {**outsider.prepare(token.functions.mint(net.accounts()[2].address, 1)), "gas": 100_000}
    signed = await outsider.sign(request, await outsider.pending_nonce(outsider.sender()), None)
    assert (await outsider.broadcast(signed.raw)).outcome is BroadcastOutcome.ACCEPTED
    receipt = await mined(outsider, signed.tx_hash)
    assert receipt.status == 0 and not receipt.succeeded
    assert receipt.revert_reason == "only minter"
    assert receipt.effective_fee > 0  # a revert still pays for gas


async def test_receipt_logs_are_decoded_with_known_abis(net: Any, token: Contract, chain: EvmChain) -> None:
    bob = net.accounts()[2].address
    request = await chain.estimate(chain.prepare(token.functions.mint(bob, 600)))
    assert request["contract"] == token.address and request["abi_ref"].startswith("abi:")
    assert journal_roundtrip(request) == request
    signed = await chain.sign(request, await chain.pending_nonce(chain.sender()), None)
    await chain.broadcast(signed.raw)
    receipt = await mined(chain, signed.tx_hash)
    assert receipt.logs == [{
        "event": "Transfer",
        "args": {"sender": "0x0000000000000000000000000000000000000000", "receiver": bob, "value": 600},
        "address": token.address,
        "log_index": 0,
    }]

    # a process that never prepared a call (tracker elsewhere, restart) sees raw logs...
    fresh = EvmChain("devnet", net.rpc_url, LocalSigner.from_key(net.accounts()[0].private_key))
    # ...unless it was given the ABI up front
    taught = EvmChain("devnet", net.rpc_url, LocalSigner.from_key(net.accounts()[0].private_key),
                      abis=[load_token_artifact().abi])
    try:
        (raw_log,) = (await mined(fresh, signed.tx_hash)).logs
        assert "event" not in raw_log and len(raw_log["topics"]) == 3
        assert raw_log["data"] == "0x" + (600).to_bytes(32, "big").hex()
        assert raw_log["address"] == token.address
        assert (await mined(taught, signed.tx_hash)).logs == receipt.logs
    finally:
        await fresh.aclose()
        await taught.aclose()


async def test_headers_tags_and_block_contents(net: Any, chain: EvmChain) -> None:
    net.mine(3)
    head = await chain.head()
    assert head.number >= 3
    assert await chain.header_at(head.number) == head
    parent = await chain.header_at(head.number - 1)
    assert parent is not None and parent.hash == head.parent_hash
    assert await chain.header_at(head.number + 1000) is None
    assert await chain.block_tx_hashes("0x" + "ab" * 32) == []
    for tag in ("finalized", "safe"):
        number = await chain.tagged_number(tag)
        assert number is not None and 0 <= number <= head.number
    with pytest.raises(ValueError, match="finality tag"):
        await chain.tagged_number("finalised")


async def test_gap_filler_burns_a_nonce_harmlessly(net: Any, chain: EvmChain) -> None:
    request = chain.gap_filler(chain.sender())
    assert request["to"] == chain.sender() and request["value"] == 0 and request["gas"] == 21_000
    assert await chain.estimate(request) == request  # gas is fixed: no estimation call
    nonce = await chain.pending_nonce(chain.sender())
    signed = await chain.sign(request, nonce, None)
    assert (await chain.broadcast(signed.raw)).outcome is BroadcastOutcome.ACCEPTED
    receipt = await mined(chain, signed.tx_hash)
    assert receipt.succeeded and receipt.nonce == nonce and receipt.gas_used == 21_000


async def test_wrong_chain_id_is_a_configuration_error(net: Any) -> None:
    adapter = EvmChain("devnet", net.rpc_url, LocalSigner.from_key(net.accounts()[0].private_key), chain_id=1)
    try:
        with pytest.raises(ChainIdMismatch) as err:
            await adapter.sign(adapter.gap_filler(adapter.sender()), 0, None)
        assert isinstance(err.value, ConfigurationError)
        with pytest.raises(ChainIdMismatch):  # what a tracker reads first, before anything is signed
            await adapter.head()
    finally:
        await adapter.aclose()


async def test_async_signer_is_awaited(net: Any) -> None:
    """A remote signer (KMS/HSM) may return an awaitable."""

    class RemoteSigner:
        def __init__(self, inner: LocalSigner) -> None:
            self._inner = inner

        @property
        def address(self) -> str:
            return self._inner.address

        async def sign_transaction(self, tx: dict[str, Any]) -> tuple[bytes, str]:
            await asyncio.sleep(0)
            return self._inner.sign_transaction(tx)

    adapter = EvmChain("devnet", net.rpc_url, RemoteSigner(LocalSigner.from_key(net.accounts()[3].private_key)))
    try:
        signed = await adapter.sign(adapter.gap_filler(adapter.sender()), 0, None)
        assert (await adapter.broadcast(signed.raw)).outcome is BroadcastOutcome.ACCEPTED
        assert (await mined(adapter, signed.tx_hash)).succeeded
    finally:
        await adapter.aclose()


@pytest.mark.anvil
async def test_legacy_chain_is_priced_with_gas_price() -> None:
    require_anvil()
    with Anvil(hardfork="berlin") as net:
        adapter = EvmChain("legacy", net.rpc_url, LocalSigner.from_key(net.accounts()[0].private_key))
        try:
            signed = await signed_transfer(adapter, net.accounts()[1].address, 7)
            assert set(signed.fees) == {"gas_price"} and type(signed.fees["gas_price"]) is int
            assert (await adapter.broadcast(signed.raw)).outcome is BroadcastOutcome.ACCEPTED
            receipt = await mined(adapter, signed.tx_hash)
            assert receipt.effective_fee == receipt.gas_used * signed.fees["gas_price"]
            assert adapter.bump_fees(signed.fees, 1.1) == {"gas_price": -(-signed.fees["gas_price"] * 11 // 10)}
        finally:
            await adapter.aclose()


async def test_works_on_web3_eth_tester_provider_directly() -> None:
    """Any web3 provider works, including a synchronous in-process one."""
    provider = EthereumTesterProvider()
    assert provider.ethereum_tester is not None
    keys = provider.ethereum_tester.backend.account_keys
    adapter = EvmChain("tester", provider, LocalSigner.from_key(keys[0].to_bytes()))
    bob = LocalSigner.from_key(keys[1].to_bytes()).address
    try:
        signed = await signed_transfer(adapter, bob, 5)
        assert (await adapter.broadcast(signed.raw)).outcome is BroadcastOutcome.ACCEPTED
        assert (await adapter.broadcast(signed.raw)).outcome is BroadcastOutcome.NONCE_TOO_LOW
        receipt = await mined(adapter, signed.tx_hash)
        assert receipt.succeeded and receipt.nonce == 0
        assert (await adapter.head()).number == receipt.block_number
    finally:
        await adapter.aclose()
