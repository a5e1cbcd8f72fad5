"""The Bitcoin JSON-RPC client against scripted HTTP answers (httpx's MockTransport):
exact amounts, Bitcoin Core's error bodies, redirects and refusals as EndpointError
with the credentials redacted, transport failures as RpcUnavailable."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest

from adapters.bitcoin import RpcError, RpcUnavailable
from adapters.bitcoin.rpc import BitcoinRpc
from chainflow.chain.adapter import EndpointError

URL = "http://alice:s3cr%40t-pass@127.0.0.1:18443"
PASSWORD = "s3cr@t-pass"


def _rpc(handler: Callable[[httpx.Request], httpx.Response], seen: list[httpx.Request]) -> BitcoinRpc:
    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return BitcoinRpc(URL, timeout=5, transport=httpx.MockTransport(record))


async def test_amounts_are_decimals_and_credentials_a_header() -> None:
    seen: list[httpx.Request] = []
    text = '{"result": {"amount": 0.1, "total": 20999999.97690000, "height": 7}, "error": null, "id": 1}'
    rpc = _rpc(lambda r: httpx.Response(200, text=text), seen)
    result = await rpc.call("scantxoutset", "start", ["addr(x)"])
    assert result == {"amount": Decimal("0.1"), "total": Decimal("20999999.97690000"), "height": 7}
    assert isinstance(result["height"], int)
    (request,) = seen
    assert str(request.url) == "http://127.0.0.1:18443/"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert json.loads(request.content)["params"] == ["start", ["addr(x)"]]
    assert repr(rpc) == "BitcoinRpc(http://127.0.0.1:18443)"
    await rpc.aclose()


@pytest.mark.parametrize("status,code,message", [
    (500, -5, "No such mempool or blockchain transaction"),
    (404, -32601, "Method not found"),
    (400, -32600, "Invalid Request object"),
    (200, -26, "txn-mempool-conflict"),
])
async def test_node_errors_keep_code_and_message(status: int, code: int, message: str) -> None:
    body = json.dumps({"result": None, "error": {"code": code, "message": message}, "id": 1})
    rpc = _rpc(lambda r: httpx.Response(status, text=body), [])
    with pytest.raises(RpcError) as caught:
        await rpc.call("getrawtransaction", "ab" * 32)
    assert (caught.value.code, caught.value.message) == (code, message)
    await rpc.aclose()


async def test_a_wrong_password_is_an_endpoint_error_without_it() -> None:
    rpc = _rpc(lambda r: httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="jsonrpc"'}), [])
    with pytest.raises(EndpointError) as caught:
        await rpc.call("getblockchaininfo")
    assert caught.value.status == 401
    assert str(caught.value) == ("getblockchaininfo: the node at http://127.0.0.1:18443 answered HTTP 401 "
                                 "Unauthorized (refusal): check the chain's RPC URL and credentials")
    assert PASSWORD not in str(caught.value) and "s3cr" not in str(caught.value) and "alice" not in str(caught.value)
    await rpc.aclose()


async def test_a_redirect_is_never_followed() -> None:
    seen: list[httpx.Request] = []
    rpc = _rpc(lambda r: httpx.Response(307, headers={"Location": "http://elsewhere.example/"}), seen)
    with pytest.raises(EndpointError, match="HTTP 307 Temporary Redirect \\(redirect \\(not followed\\)\\)"):
        await rpc.call("sendrawtransaction", "00")
    assert [r.url.host for r in seen] == ["127.0.0.1"]
    await rpc.aclose()


@pytest.mark.parametrize("response", [
    httpx.Response(503, text="Work queue depth exceeded"),
    httpx.Response(429),
    httpx.Response(200, text="<html>proxy</html>"),
])
async def test_no_usable_answer_is_unavailable(response: httpx.Response) -> None:
    rpc = _rpc(lambda r: response, [])
    with pytest.raises(RpcUnavailable):
        await rpc.call("getbestblockhash")
    await rpc.aclose()


async def test_transport_failures_are_unavailable_and_redacted() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach http://alice:{PASSWORD}@127.0.0.1:18443/", request=request)

    rpc = _rpc(refuse, [])
    with pytest.raises(RpcUnavailable) as caught:
        await rpc.call("getbestblockhash")
    assert isinstance(caught.value, ConnectionError)
    assert PASSWORD not in str(caught.value) and "ConnectError" in str(caught.value)
    await rpc.aclose()


async def test_aclose_closes_the_connection_pool() -> None:
    rpc = _rpc(lambda r: httpx.Response(200, text='{"result": 1, "error": null, "id": 1}'), [])
    assert await rpc.call("getblockcount") == 1
    (client,) = rpc._clients.values()
    await rpc.aclose()
    assert client.is_closed and not rpc._clients


def test_the_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="rpc must be an http\\(s\\) URL"):
        BitcoinRpc("127.0.0.1:18443", timeout=5)


@pytest.mark.parametrize("connections", [0, -1, 2.5, True, "8"])
def test_the_connection_bound_must_be_a_positive_int(connections: object) -> None:
    with pytest.raises(ValueError, match="rpc connections must be an int of at least 1"):
        BitcoinRpc("http://127.0.0.1:18443", timeout=5, connections=connections)  # type: ignore[arg-type]
