"""Minimal synchronous JSON-RPC client used by the devnet control helpers.

The helpers deliberately avoid web3: they need only a handful of raw calls,
must work before any web3 middleware is configured, and must surface the raw
error object unchanged.
"""

from __future__ import annotations

import base64
import itertools
import json
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from typing import Any

from devnet.errors import DevnetError, RpcError


class JsonRpcClient:
    """Blocking HTTP JSON-RPC 2.0 client for one endpoint.

    Credentials in the URL (``http://user:pass@host:port``, as Bitcoin nodes
    want) become a Basic auth header: urllib would otherwise take them for
    part of the host name. ``exact_numbers`` parses JSON fractions as
    `Decimal` and sends `Decimal` params as decimal strings, which Bitcoin
    Core accepts for amounts: a coin amount must never pass through a float.
    Every request closes its connection (urllib's default), so no idle
    keep-alive socket can delay a node's shutdown.
    """

    def __init__(self, url: str, timeout: float = 10.0, *, exact_numbers: bool = False) -> None:
        parts = urllib.parse.urlsplit(url)
        self._headers = {"Content-Type": "application/json"}
        if parts.username is not None:
            credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode()
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        self.url = urllib.parse.urlunsplit(parts)
        self.timeout = timeout
        self.exact_numbers = exact_numbers
        self._ids = itertools.count(1)

    def call(self, method: str, *params: Any) -> Any:
        """Invoke `method`; raise `RpcError` for a JSON-RPC error response."""
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        request = urllib.request.Request(
            self.url,
            data=json.dumps(payload, default=self._encode_exact).encode(),
            headers=self._headers,
            method="POST",
        )
        parse_float = Decimal if self.exact_numbers else float
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.loads(response.read(), parse_float=parse_float)
        except urllib.error.HTTPError as exc:
            # Some nodes answer JSON-RPC errors with a non-200 status; the body still counts.
            raw = exc.read()
            try:
                body = json.loads(raw, parse_float=parse_float)
            except ValueError:
                raise DevnetError(f"{method}: HTTP {exc.code}: {raw[:200]!r}") from exc
        err = body.get("error")
        if err is not None:  # JSON-RPC 1.0 nodes (Bitcoin Core < 28) send "error": null on success
            raise RpcError(int(err.get("code", -32000)), str(err.get("message", "")), err.get("data"), method=method)
        return body.get("result")

    def _encode_exact(self, value: Any) -> Any:
        if self.exact_numbers and isinstance(value, Decimal):
            return str(value)
        raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_quantity(value: int) -> str:
    """Encode an int as a JSON-RPC QUANTITY (minimal hex, no leading zeros)."""
    if value < 0:
        raise ValueError(f"quantities are unsigned, got {value}")
    return hex(value)
