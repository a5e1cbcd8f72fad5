"""Minimal synchronous JSON-RPC client used by the devnet control helpers.

The helpers deliberately avoid web3: they need only a handful of raw calls,
must work before any web3 middleware is configured, and must surface the raw
error object unchanged.
"""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from typing import Any

from devnet.errors import DevnetError, RpcError


class JsonRpcClient:
    """Blocking HTTP JSON-RPC 2.0 client for one endpoint."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self._ids = itertools.count(1)

    def call(self, method: str, *params: Any) -> Any:
        """Invoke `method`; raise `RpcError` for a JSON-RPC error response."""
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        request = urllib.request.Request(
            self.url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            # Some nodes answer JSON-RPC errors with a non-200 status; the body still counts.
            raw = exc.read()
            try:
                body = json.loads(raw)
            except ValueError:
                raise DevnetError(f"{method}: HTTP {exc.code}: {raw[:200]!r}") from exc
        if "error" in body:
            err = body["error"]
            raise RpcError(int(err.get("code", -32000)), str(err.get("message", "")), err.get("data"))
        return body.get("result")


def to_quantity(value: int) -> str:
    """Encode an int as a JSON-RPC QUANTITY (minimal hex, no leading zeros)."""
    if value < 0:
        raise ValueError(f"quantities are unsigned, got {value}")
    return hex(value)
