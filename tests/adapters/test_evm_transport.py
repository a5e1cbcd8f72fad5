"""Broadcasts whose answer never arrives are UNKNOWN; reads raise a retryable error."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from eth_account import Account

from adapters.evm import EvmChain, LocalSigner, RpcUnavailable
from chainflow.chain.adapter import BroadcastOutcome

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)  # read the request, then drop the connection unanswered
    writer.close()


async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    await asyncio.sleep(30)


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nContent-Type: application/json\r\n\r\nnot json!")
    await writer.drain()
    writer.close()


async def http_502(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(65536)
    writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    writer.close()


@pytest.fixture
def raw_tx() -> bytes:
    tx = {"to": "0x" + "11" * 20, "value": 1, "gas": 21_000, "nonce": 0, "chainId": 1,
          "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9, "type": 2}
    return bytes(Account.sign_transaction(tx, Account.create().key).raw_transaction)


@pytest.fixture
def signer() -> LocalSigner:
    return LocalSigner.from_key(Account.create().key)


@pytest.fixture
async def adapters() -> AsyncIterator[list[EvmChain]]:
    made: list[EvmChain] = []
    yield made
    for adapter in made:
        await adapter.aclose()


async def test_connection_refused_is_unknown(raw_tx: bytes, signer: LocalSigner, adapters: list[EvmChain]) -> None:
    adapter = EvmChain("x", f"http://127.0.0.1:{closed_port()}", signer, timeout=2)
    adapters.append(adapter)
    result = await adapter.broadcast(raw_tx)
    assert result.outcome is BroadcastOutcome.UNKNOWN
    with pytest.raises(RpcUnavailable) as err:
        await adapter.head()
    assert isinstance(err.value, ConnectionError) and not isinstance(err.value, ValueError)


@pytest.mark.parametrize("handler", [hang_up, never_answer, garbage, http_502])
async def test_lost_or_unreadable_answer_is_unknown(
    handler: Handler, raw_tx: bytes, signer: LocalSigner, adapters: list[EvmChain]
) -> None:
    server, url = await serve(handler)
    try:
        adapter = EvmChain("x", url, signer, timeout=0.5)
        adapters.append(adapter)
        result = await adapter.broadcast(raw_tx)
        assert result.outcome is BroadcastOutcome.UNKNOWN, result.detail
        with pytest.raises(RpcUnavailable):
            await adapter.pending_nonce(adapter.sender())
    finally:
        server.close()


async def test_provider_url_secrets_stay_out_of_errors_and_repr(signer: LocalSigner, adapters: list[EvmChain]) -> None:
    server, url = await serve(http_502)
    try:
        adapter = EvmChain("x", f"{url}/v3/SECRET-API-KEY?token=SECRET2", signer, timeout=1)
        adapters.append(adapter)
        result = await adapter.broadcast(b"\x02")
        assert result.outcome is BroadcastOutcome.UNKNOWN
        assert "SECRET" not in result.detail and "SECRET" not in repr(adapter)
        with pytest.raises(RpcUnavailable) as err:
            await adapter.head()
        assert "SECRET" not in str(err.value)
    finally:
        server.close()


async def test_params_that_are_not_json_are_a_bug_not_an_outage(signer: LocalSigner,
                                                                 adapters: list[EvmChain]) -> None:
    adapter = EvmChain("x", f"http://127.0.0.1:{closed_port()}", signer, timeout=1)
    adapters.append(adapter)
    with pytest.raises(TypeError, match="eth_call: parameters are not JSON"):
        await adapter.rpc.call("eth_call", {"data": b"\x01"}, "latest")
