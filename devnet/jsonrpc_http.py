"""Tiny threaded JSON-RPC 2.0 over HTTP server bound to loopback.

stdlib-only so the in-process devnet adds no dependencies; concurrency is
safe because the dispatcher serializes chain access itself.
"""

from __future__ import annotations

import json
import socket
import threading
import traceback
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from devnet.errors import RpcError
from devnet.ports import LOOPBACK

Dispatch = Callable[[str, list[Any]], Any]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INTERNAL_ERROR = -32603
_MAX_BODY = 16 * 1024 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    # socketserver's default listen backlog is 5: a burst of new connections (a worker's
    # runs and its tracker starting at once) overflows it on a loaded machine, and a
    # dropped SYN is retried only after TCP's 1 s initial timeout
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], dispatch: Dispatch) -> None:
        self.dispatch = dispatch
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: web3's requests session reuses connections
    disable_nagle_algorithm = True  # headers and body go out in two writes; avoid 40 ms delayed-ACK stalls
    timeout = 60
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # request logs would drown test output

    def do_GET(self) -> None:
        self._send(
            405, {"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": "use POST"}}
        )

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._send(413, _error(None, INVALID_REQUEST, "request too large"))
            return
        body = self.rfile.read(length)
        try:
            request = json.loads(body)
        except ValueError:
            self._send(200, _error(None, PARSE_ERROR, "parse error"))
            return
        if isinstance(request, list):
            response: Any = (
                [self._handle_one(item) for item in request]
                if request
                else _error(None, INVALID_REQUEST, "empty batch")
            )
        else:
            response = self._handle_one(request)
        self._send(200, response)

    def _handle_one(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return _error(None, INVALID_REQUEST, "invalid request")
        request_id = request.get("id")
        params = request.get("params") or []
        if not isinstance(params, list):
            return _error(request_id, INVALID_REQUEST, "params must be an array")
        try:
            result = self.server.dispatch(request["method"], params)
        except RpcError as exc:
            return {"jsonrpc": "2.0", "id": request_id, "error": exc.to_json()}
        except Exception as exc:  # noqa: BLE001 - a handler bug must become an RPC error, not a dead socket
            traceback.print_exc()
            return _error(request_id, INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}")
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def _send(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


class JsonRpcHttpServer:
    """Serve `dispatch` on 127.0.0.1:`port` (0 = any free port) from a daemon thread."""

    def __init__(self, dispatch: Dispatch, port: int = 0) -> None:
        self._server = _Server((LOOPBACK, port), dispatch)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="devnet-jsonrpc",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting, then cut keep-alive connections so no request hits a dead chain."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        with self._server.connections_lock:
            open_connections = list(self._server.connections)
        for conn in open_connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
