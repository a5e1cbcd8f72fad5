"""JSON-RPC calls through web3's request manager, raw results, classified failures.

The adapter needs the node's *own* error text to classify broadcasts ("already known",
"nonce too low"...) and must tell a node's answer apart from a transport failure, which
web3's formatted ``w3.eth.*`` methods blur (and they add middleware round trips: chain-id
validation, gas estimation).  So calls go through ``manager.coro_request`` with no
middleware, results stay raw JSON, and every failure becomes ``RpcError`` (the node
answered) or ``RpcUnavailable`` (it did not, or we could not read it).

Given a URL, the provider is built without web3's automatic retries: the engine owns
retries, and web3's default would re-send ``eth_sendRawTransaction`` up to five times
with back-off inside one broadcast call.  It also gets a keep-alive session per event
loop (web3's default session closes the connection after every request, which costs a
TCP - and for remote nodes a TLS - handshake per call); a pooled connection the server
closed while idle is retried once, which is harmless even for a broadcast (the second
answer is "already known" at worst).  Given a synchronous provider (e.g. web3's
``EthereumTesterProvider``), calls run in a worker thread, one at a time, so they do not
block the event loop and the in-process chain never sees concurrent requests.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yarl
from web3 import AsyncHTTPProvider, AsyncWeb3, Web3
from web3.exceptions import BadResponseFormat, ProviderConnectionError, Web3RPCError
from web3.providers import BaseProvider
from web3.providers.async_base import AsyncBaseProvider

from .errors import RpcError, RpcUnavailable

RpcTarget = str | AsyncBaseProvider | BaseProvider | AsyncWeb3[Any] | Web3

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncio.TimeoutError,
    aiohttp.ClientError,
    OSError,  # ConnectionError, requests' exceptions (sync HTTPProvider)
    ProviderConnectionError,
    BadResponseFormat,
    json.JSONDecodeError,
)


def redact_url(url: str) -> str:
    """``scheme://host:port/…``: provider URLs often carry an API key in the path or
    query, and error texts end up in logs and in the journal."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    tail = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{host}{port}{tail}"


class Rpc:
    def __init__(self, target: RpcTarget, *, timeout: float) -> None:
        self._owned = isinstance(target, str)
        self._lock = threading.Lock()
        self._sync: Web3 | None = None
        self._async: AsyncWeb3[Any] | None = None
        self._secret_url: str | None = None
        self._session_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        if isinstance(target, str):
            provider = AsyncHTTPProvider(
                target,
                request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)},
                exception_retry_configuration=None,
            )
            self._async = AsyncWeb3(provider, middleware=[])
            self._secret_url = target
        elif isinstance(target, AsyncWeb3):
            self._async = target
        elif isinstance(target, Web3):
            self._sync = target
        elif isinstance(target, AsyncBaseProvider):
            self._async = AsyncWeb3(target, middleware=[])
        elif isinstance(target, BaseProvider):
            self._sync = Web3(target, middleware=[])
        else:
            raise TypeError(
                f"rpc must be a URL, a web3 provider or a Web3/AsyncWeb3 instance, not {type(target).__name__}"
            )
        self.calls = 0

    def __repr__(self) -> str:
        where = redact_url(self._secret_url) if self._secret_url else type(self._provider()).__name__
        return f"Rpc({where})"

    def _provider(self) -> Any:
        return (self._async or self._sync).provider  # type: ignore[union-attr]

    def _clean(self, text: str) -> str:
        """Error text with the URL's path and query (where keys live) masked, in the
        forms aiohttp may quote it in."""
        if not self._secret_url:
            return text
        parts = urlsplit(self._secret_url)
        normalised = str(yarl.URL(self._secret_url))
        for secret in (self._secret_url, normalised):
            text = text.replace(secret, redact_url(self._secret_url))
        for secret in (parts.path if parts.path not in ("", "/") else "", parts.query):
            if secret:
                text = text.replace(secret, "…")
        return text

    async def call(self, method: str, *params: Any) -> Any:
        """The raw ``result`` of ``method``; raises ``RpcError`` / ``RpcUnavailable``."""
        self.calls += 1
        try:
            if self._async is None:
                return await asyncio.to_thread(self._blocking, method, list(params))
            if self._owned:
                await self._keep_alive_session()
                try:
                    return await self._async.manager.coro_request(method, list(params))  # type: ignore[arg-type]
                except aiohttp.ServerDisconnectedError:
                    pass  # stale pooled connection: one fresh attempt below
            return await self._async.manager.coro_request(method, list(params))  # type: ignore[arg-type]
        except Web3RPCError as exc:
            raw_error: Any = (exc.rpc_response or {}).get("error") or {}
            error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {"message": str(raw_error)}
            raise RpcError(method, int(error.get("code", 0) or 0), str(error.get("message", "")),
                           error.get("data")) from None
        except _TRANSPORT_ERRORS as exc:
            raise RpcUnavailable(method, self._clean(f"{type(exc).__name__}: {exc}")) from None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - in-process providers raise their node errors
            if self._owned:
                raise RpcUnavailable(method, self._clean(f"{type(exc).__name__}: {exc}")) from None
            message = str(exc)
            raise RpcError(method, 3 if "revert" in message.lower() else -32000, message) from None

    async def _keep_alive_session(self) -> None:
        loop = asyncio.get_running_loop()
        if self._session_loop is not None and self._session_loop() is loop:
            return
        assert self._async is not None
        session = aiohttp.ClientSession(raise_for_status=True, connector=aiohttp.TCPConnector(limit=64))
        cached = await self._async.provider.cache_async_session(session)
        if cached is not session:  # web3 already holds a session for this loop
            await session.close()
        self._session_loop = weakref.ref(loop)

    def _blocking(self, method: str, params: list[Any]) -> Any:
        assert self._sync is not None
        with self._lock:
            return self._sync.manager.request_blocking(method, params)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        """Close the provider's HTTP sessions: they are bound to the current event loop.
        Harmless for a caller's provider too, which opens a new session on next use."""
        if self._async is None:
            return
        self._session_loop = None
        disconnect = getattr(self._async.provider, "disconnect", None)
        if disconnect is not None:
            await disconnect()
