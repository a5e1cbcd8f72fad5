"""Broadcasts whose answer never arrives are UNKNOWN; reads raise a retryable error."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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


@pytest.mark.parametrize("provider", ["HTTPProvider", "AsyncHTTPProvider"])
async def test_an_http_providers_url_secrets_stay_out_of_errors(signer: LocalSigner, adapters: list[EvmChain],
                                                                provider: str) -> None:
    """The RPC given as a web3 provider rather than a URL: the transport's error texts
    (requests' and aiohttp's "... for url: ...") are masked the same way."""
    from web3 import AsyncWeb3, Web3

    server, url = await serve(http_502)
    try:
        target = f"{url}/v3/SECRET-API-KEY?apikey=SECRET2"
        made = Web3.HTTPProvider(target) if provider == "HTTPProvider" else AsyncWeb3.AsyncHTTPProvider(target)
        adapter = EvmChain("x", made, signer, timeout=1)
        adapters.append(adapter)
        with pytest.raises(Exception) as err:
            await adapter.head()
        assert "SECRET" not in str(err.value), str(err.value)
        result = await adapter.broadcast(b"\x02")
        assert "SECRET" not in result.detail
    finally:
        server.close()


async def test_params_that_are_not_json_are_a_bug_not_an_outage(signer: LocalSigner,
                                                                 adapters: list[EvmChain]) -> None:
    adapter = EvmChain("x", f"http://127.0.0.1:{closed_port()}", signer, timeout=1)
    adapters.append(adapter)
    with pytest.raises(TypeError, match="eth_call: parameters are not JSON"):
        await adapter.rpc.call("eth_call", {"data": b"\x01"}, "latest")


def json_rpc_server(on_batch: str, seen: list[str]) -> Handler:
    """A node answering every call with its own method name; a batch is answered as
    one (``on_batch="answer"``), dropped unanswered (``"drop"``: a proxy that cannot
    parse one), refused with one error object (``"error"``), with a 400, or failed with
    a 502 (``"502"``: a proxy or provider failing batches only).  ``seen``
    records each request's shape, "batch" or the method."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # the client closed its keep-alive connection
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            request = json.loads(await reader.readexactly(length))
            seen.append("batch" if isinstance(request, list) else request["method"])
            status = 200
            if not isinstance(request, list):
                answer: Any = {"jsonrpc": "2.0", "id": request["id"], "result": request["method"]}
            elif on_batch == "answer":
                answer = [{"jsonrpc": "2.0", "id": r["id"], "result": r["method"]} for r in reversed(request)]
            elif on_batch == "drop":
                writer.close()
                return
            elif on_batch == "error":
                answer = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "batches not allowed"}}
            elif on_batch == "502":
                status, answer = 502, {"error": "upstream cannot take batches"}
            else:
                status, answer = 400, {"error": "bad request"}
            body = json.dumps(answer).encode()
            writer.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (status, len(body), body))
            await writer.drain()
    return handler


@pytest.mark.parametrize("on_batch", ["answer", "drop", "error", "400", "502"])
async def test_reads_asked_together_share_one_exchange_unless_the_node_refuses_batches(
        on_batch: str, signer: LocalSigner, adapters: list[EvmChain]) -> None:
    seen: list[str] = []
    server, url = await serve(json_rpc_server(on_batch, seen))
    try:
        adapter = EvmChain("x", url, signer, timeout=2)
        adapters.append(adapter)
        for _ in range(2):
            assert await adapter.rpc.call_all(("a", []), ("b", [1])) == ["a", "b"]
        if on_batch == "answer":
            assert seen == ["batch", "batch"] and adapter.rpc.exchanges == 2
        else:  # found out on first use: one call at a time from then on
            assert seen[-4:] == ["a", "b", "a", "b"] and seen.count("batch") >= 1
    finally:
        server.close()


async def test_a_batch_meeting_an_outage_raises_and_stays_a_batch(signer: LocalSigner,
                                                                  adapters: list[EvmChain]) -> None:
    seen: list[str] = []

    async def down(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        request = json.loads(await reader.readexactly(length))
        seen.append("batch" if isinstance(request, list) else request["method"])
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server, url = await serve(down)
    try:
        adapter = EvmChain("x", url, signer, timeout=1)
        adapters.append(adapter)
        for _ in range(2):
            with pytest.raises(RpcUnavailable):
                await adapter.rpc.call_all(("a", []), ("b", []))
        # each time the batch, then one call alone (an outage, not a node failing batches
        # only), and nothing more sent to a node that is down
        assert adapter.rpc.exchanges == 4 and seen == ["batch", "a", "batch", "a"]
    finally:
        server.close()
