"""A JSON-RPC proxy on 127.0.0.1 that lies the way flaky nodes do.

For ``eth_sendRawTransaction`` it forwards the transaction and then drops the answer
(connection closed, or a 502) or answers only after the client has timed out. For
``eth_getTransactionReceipt`` it first serves a receipt for a block that does not
exist on the canonical chain, then tells the truth (a receipt that "disappears").
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up on a slow answer is the point, not an error


class LyingProxy:
    def __init__(self, upstream: str, *, slow_seconds: float = 2.0) -> None:
        self.upstream = upstream
        self.slow_seconds = slow_seconds
        self.counts: Counter[str] = Counter()
        self.lies: Counter[str] = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                proxy.handle(self, body)

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LyingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _forward(self, body: bytes) -> bytes:
        req = urllib.request.Request(self.upstream, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return bytes(resp.read())

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        call = json.loads(body)
        method = call.get("method", "")
        with self._lock:
            self.counts[method] += 1
            n = self.counts[method]
        if method == "eth_sendRawTransaction" and n % 3 != 0:
            self._forward(body)  # the node has it; the client never learns
            if n % 3 == 1:
                self.lies["dropped"] += 1
                handler.close_connection = True
                handler.send_response(502)
                handler.end_headers()
                return
            self.lies["slow"] += 1
            time.sleep(self.slow_seconds)
        elif method == "eth_getTransactionReceipt" and n % 2 == 1:
            real = json.loads(self._forward(body))
            if real.get("result"):
                self.lies["phantom receipt"] += 1
                fake = dict(real["result"], blockHash="0x" + "ee" * 32, status="0x1")
                self._reply(handler, json.dumps({"jsonrpc": "2.0", "id": call.get("id"), "result": fake}).encode())
                return
        self._reply(handler, self._forward(body))

    @staticmethod
    def _reply(handler: BaseHTTPRequestHandler, data: bytes) -> None:
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting: exactly the case being tested
