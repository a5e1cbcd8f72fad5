"""The EVM RPC client never follows a redirect: a 307/308 would re-POST a signed
transaction to another origin, a 301/302 would turn into a GET whose answer (here a
foreign ``{"result": "0x1"}``) was taken for the node's.  On the plain URL client a
3xx is an ``EndpointError`` naming the redacted URL and the status (a broadcast of
signed bytes reports it as UNKNOWN: the tracker re-broadcasts, the step does not fail);
through a web3 HTTP provider it is an unreadable answer.  Either way the target sees
nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from eth_account import Account
from web3 import AsyncHTTPProvider, HTTPProvider

from adapters.evm import EvmChain, LocalSigner, RpcUnavailable
from chainflow.chain.adapter import EndpointError
from chainflow.errors import ConfigurationError

from ._httpstub import HttpStub

pytestmark = pytest.mark.timeout(60)

REDIRECTS = [(301, "Moved Permanently"), (302, "Found"), (307, "Temporary Redirect"), (308, "Permanent Redirect")]


@pytest.fixture
async def target() -> AsyncIterator[HttpStub]:
    """Where the redirects point: answers anything with a plausible JSON-RPC result."""
    stub = await HttpStub(body=b'{"jsonrpc": "2.0", "id": 1, "result": "0x1"}').start()
    yield stub
    await stub.stop()


@pytest.fixture(params=REDIRECTS, ids=[str(s) for s, _ in REDIRECTS])
async def redirector(request: pytest.FixtureRequest, target: HttpStub) -> AsyncIterator[HttpStub]:
    status, reason = request.param
    stub = await HttpStub(status=status, reason=reason, headers={"Location": target.url + "/rpc"}).start()
    yield stub
    await stub.stop()


@pytest.fixture
def raw_tx() -> bytes:
    tx = {"to": "0x" + "11" * 20, "value": 1, "gas": 21_000, "nonce": 0, "chainId": 1,
          "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9, "type": 2}
    return bytes(Account.sign_transaction(tx, Account.create().key).raw_transaction)


def chain(rpc: Any) -> EvmChain:
    return EvmChain("dev", rpc, LocalSigner.from_key(Account.create().key), chain_id=1, timeout=5)


async def test_url_client_refuses_redirects(redirector: HttpStub, target: HttpStub, raw_tx: bytes) -> None:
    port = redirector.url.rsplit(":", 1)[1]
    adapter = chain(f"http://user:pw@127.0.0.1:{port}/key/SECRETKEY")
    try:
        # signed bytes: never "accepted" on a stranger's word, never a step failure either
        result = await adapter.broadcast(raw_tx)
        with pytest.raises(EndpointError) as err:
            await adapter.pending_nonce(adapter.sender())
    finally:
        await adapter.aclose()
    assert result.outcome.value == "unknown" and f"HTTP {redirector.status}" in result.detail, result
    assert isinstance(err.value, ConfigurationError)
    assert err.value.status == redirector.status
    message = str(err.value)
    assert f"HTTP {redirector.status}" in message and f"http://127.0.0.1:{port}/…" in message, message
    assert "SECRETKEY" not in message and "pw" not in message
    assert len(redirector.requests) == 2 and all(m == "POST" for m, _ in redirector.requests)
    assert target.requests == [], "the redirect was followed"


@pytest.mark.parametrize("provider", [HTTPProvider, AsyncHTTPProvider])
async def test_web3_http_providers_do_not_follow_redirects(provider: Any, redirector: HttpStub, target: HttpStub,
                                                          raw_tx: bytes) -> None:
    adapter = chain(provider(redirector.url))
    try:
        result = await adapter.broadcast(raw_tx)
        with pytest.raises(RpcUnavailable):
            await adapter.pending_nonce(adapter.sender())
    finally:
        await adapter.aclose()
    assert result.outcome.value == "unknown", result
    assert redirector.requests, "the provider never asked the configured URL"
    assert target.requests == [], "the redirect was followed"
