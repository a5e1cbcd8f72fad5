"""Raw JSON-RPC over web3's async HTTP provider.

The adapter needs the node's *own* error text to classify broadcasts ("already known",
"nonce too low"...) and must tell a node's answer from a transport failure; web3's
formatted methods blur both, so calls go through ``make_request`` and are checked here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from web3 import AsyncHTTPProvider


class RpcError(Exception):
    """The node answered with a JSON-RPC error."""

    def __init__(self, method: str, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method, self.code, self.message, self.data = method, code, message, data


class TransportError(Exception):
    """No usable answer: timeout, connection refused, dropped response."""


class Rpc:
    def __init__(self, url_or_provider: str | AsyncHTTPProvider, timeout: float) -> None:
        if isinstance(url_or_provider, str):
            self.provider = AsyncHTTPProvider(url_or_provider, request_kwargs={"timeout": timeout})
        else:
            self.provider = url_or_provider
        self.calls = 0

    async def call(self, method: str, *params: Any) -> Any:
        self.calls += 1
        try:
            response = await self.provider.make_request(method, list(params))  # type: ignore[arg-type]
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError, ConnectionError) as exc:
            raise TransportError(f"{method}: {type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # malformed/empty body from a broken proxy
            raise TransportError(f"{method}: unreadable answer: {exc}") from None
        error = response.get("error")
        if error:
            raise RpcError(method, int(error.get("code", 0)), str(error.get("message", "")), error.get("data"))
        if "result" not in response:
            raise TransportError(f"{method}: answer without result")
        return response["result"]

    async def aclose(self) -> None:
        disconnect = getattr(self.provider, "disconnect", None)
        if disconnect is not None:
            await disconnect()
