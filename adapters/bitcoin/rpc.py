"""Bitcoin Core's JSON-RPC over HTTP, with amounts parsed exactly.

Core writes amounts as JSON numbers in BTC ("0.00150000"); a float cannot hold most
of them, so the response text is parsed with ``parse_float=Decimal`` and converted to
integer satoshis by ``values.satoshis``, which refuses anything inexact.

Failures are told apart the way the engine needs: ``RpcError`` (the node answered:
Core sends HTTP 500 with a JSON error body for a failed call, 404 for an unknown
method, 400 for a malformed request, and those bodies are read), ``RpcUnavailable``
(no usable answer: transport failure, timeout, 5xx without a JSON body, 408/429) and
``EndpointError`` (a redirect, never followed, or another 4xx such as 401 for a wrong
RPC password: configuration, not an outage).  Credentials travel as an
``Authorization`` header, never in the URL the client logs, and every error names
the node by ``scheme://host:port`` only.

One keep-alive ``httpx.AsyncClient`` per event loop (a client's pooled connections
belong to the loop that opened them; tests and tools run several loops over one
chain).  ``aclose`` must be awaited: an idle keep-alive connection makes a node's
``stop`` wait for its 30 s timeout.

Each client keeps at most ``connections`` requests in flight.  Core queues requests
for its ``-rpcthreads`` in a queue of ``-rpcworkqueue`` (16) and answers one that
finds the queue full HTTP 500 "Work queue depth exceeded" without running it, which
twenty payouts reading coins at once on a loaded CI machine reached.  With no more
requests in flight than the queue holds, none is refused; the excess waits in
httpx's pool (counted in its ``timeout``) instead.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from chainflow.chain.adapter import EndpointError

from .errors import RpcError, RpcUnavailable

_HEADERS = {"Content-Type": "application/json"}


def _misconfigured(status: int) -> bool:
    """A redirect, or a 4xx other than 408 (timeout) and 429 (rate limited)."""
    return 300 <= status < 400 or (400 <= status < 500 and status not in (408, 429))


class BitcoinRpc:
    """Calls one node; ``url`` may carry ``user:password@`` (percent-encoded).
    ``connections`` must not exceed the node's ``-rpcworkqueue``.  ``transport`` replaces httpx's network transport (tests:
    ``httpx.MockTransport``), and with it the connection bound."""

    def __init__(self, url: str, *, timeout: float, connections: int = 8,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if isinstance(connections, bool) or not isinstance(connections, int) or connections < 1:
            raise ValueError(f"rpc connections must be an int of at least 1, got {connections!r}")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("rpc must be an http(s) URL such as http://user:pass@127.0.0.1:8332")
        try:
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            raise ValueError("rpc URL has an invalid port") from None
        self.redacted = f"{parts.scheme}://{parts.hostname}{port}" + ("/…" if parts.path not in ("", "/") else "")
        self._url = urlunsplit((parts.scheme, f"{parts.hostname}{port}", parts.path or "/", parts.query, ""))
        self._auth = (unquote(parts.username or ""), unquote(parts.password or "")) if parts.username else None
        # what error texts must not repeat; a secret too short to replace without
        # mangling the text never reaches one anyway (requests carry no userinfo)
        self._secrets = [s for s in (parts.password, unquote(parts.password or ""), parts.path.strip("/"),
                                     parts.query) if s and len(s) >= 4]
        self._timeout = timeout
        self._transport = transport
        self._limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.calls = 0

    def __repr__(self) -> str:
        return f"BitcoinRpc({self.redacted})"

    def _clean(self, text: str) -> str:
        """Error text without the URL's credentials, path or query."""
        for secret in self._secrets:
            text = text.replace(secret, "…")
        return text

    async def call(self, method: str, *params: Any, timeout: float | None = None) -> Any:
        """The ``result`` of ``method``, JSON numbers with a fraction as ``Decimal``;
        ``timeout`` overrides the client's for one slow call (``scantxoutset``)."""
        self.calls += 1
        try:
            body = json.dumps({"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)})
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{method}: parameters are not JSON-serialisable ({exc})") from None
        try:
            response = await self._client().post(self._url, content=body, headers=_HEADERS,
                                                 timeout=timeout if timeout is not None else self._timeout)
        except httpx.HTTPError as exc:
            raise RpcUnavailable(method, self._clean(f"{type(exc).__name__}: {exc}")) from None
        try:
            answer = json.loads(response.text, parse_float=Decimal) if response.content else None
        except ValueError:
            answer = None
        error = answer.get("error") if isinstance(answer, dict) else None
        if error is not None and not 300 <= response.status_code < 400:
            if not isinstance(error, dict):
                error = {"message": str(error)}
            raise RpcError(method, int(error.get("code") or 0), self._clean(str(error.get("message", ""))))
        if _misconfigured(response.status_code):
            raise EndpointError(self.redacted, response.status_code, method, response.reason_phrase)
        if response.status_code >= 400:
            raise RpcUnavailable(method, f"HTTP {response.status_code} {response.reason_phrase}")
        if not isinstance(answer, dict) or "result" not in answer:
            raise RpcUnavailable(method, f"not a JSON-RPC response: {self._clean(response.text[:200])!r}")
        return answer["result"]

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._clients.get(loop)
            if client is None or client.is_closed:
                # never follow a redirect: it would re-send a signed transaction to
                # another origin, or take a stranger's answer for the node's
                client = self._clients[loop] = httpx.AsyncClient(
                    auth=self._auth, timeout=self._timeout, follow_redirects=False, trust_env=False,
                    limits=self._limits, transport=self._transport)
            return client

    async def aclose(self) -> None:
        """Close this loop's client; forget those of loops that have ended.  A loop's
        client must be closed on that loop before it ends: its sockets outlive it
        (the node keeps each open until the client is collected)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            mine = self._clients.pop(loop, None)
            for other in [lp for lp in self._clients if lp.is_closed()]:
                del self._clients[other]
        if mine is not None:
            await mine.aclose()
