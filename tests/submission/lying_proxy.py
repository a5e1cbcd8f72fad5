"""A JSON-RPC proxy on 127.0.0.1 that lies the way flaky nodes do.

For ``eth_sendRawTransaction`` it forwards the transaction and then drops the answer
(connection closed, or a 502) or answers only after the client has timed out. For
``eth_getTransactionReceipt`` it first serves a receipt for a block that does not
exist on the canonical chain, then tells the truth (a receipt that "disappears").

It runs in a process of its own, as a flaky node does, so its threads never queue
behind the worker's event loop for the GIL, and it listens with a deep backlog (see
``_QuietServer``).  ``counts`` and ``lies`` are read from it over HTTP (after the
``with`` block: as it stopped).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[2]


class LyingProxy:
    """The proxy's process, started on ``with`` and killed on leaving it."""

    def __init__(self, upstream: str, *, slow_seconds: float = 2.0) -> None:
        self.upstream = upstream
        self.slow_seconds = slow_seconds
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None
        self._final: dict[str, Counter[str]] | None = None  # the tally as the proxy stopped

    def __enter__(self) -> LyingProxy:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.submission.lying_proxy", self.upstream, str(self.slow_seconds)],
            cwd=_ROOT, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        port = self._proc.stdout.readline().strip()
        if not port.isdigit():
            self._proc.kill()
            raise RuntimeError(f"the lying proxy did not start (it printed {port!r})")
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._proc is not None
        try:
            self._final = self._read_tally()
        finally:
            self._proc.kill()
            self._proc.wait()

    def _read_tally(self) -> dict[str, Counter[str]]:
        with urllib.request.urlopen(f"{self.url}/tally", timeout=10) as resp:
            return {which: Counter(told) for which, told in json.loads(resp.read()).items()}

    def _tally(self, which: str) -> Counter[str]:
        return (self._final or self._read_tally())[which]

    @property
    def counts(self) -> Counter[str]:
        """Calls received, by method."""
        return self._tally("counts")

    @property
    def lies(self) -> Counter[str]:
        """Lies told, by kind: "dropped", "slow", "phantom receipt"."""
        return self._tally("lies")


class _Liar:
    """The proxy's behaviour, in its own process."""

    def __init__(self, upstream: str, slow_seconds: float) -> None:
        self.upstream = upstream
        self.slow_seconds = slow_seconds
        self.counts: Counter[str] = Counter()
        self.lies: Counter[str] = Counter()
        self._lock = threading.Lock()

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
                _reply(handler, json.dumps({"jsonrpc": "2.0", "id": call.get("id"), "result": fake}).encode())
                return
        _reply(handler, self._forward(body))

    def tally(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            data = json.dumps({"counts": self.counts, "lies": self.lies}).encode()
        _reply(handler, data)


def _reply(handler: BaseHTTPRequestHandler, data: bytes) -> None:
    try:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the client gave up waiting: exactly the case being tested


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: a dozen concurrent receipt reads
    # overflowed it on a loaded machine, and a dropped SYN is retried after TCP's 1 s
    # initial timeout, the client's whole budget.  Nodes listen with a deep backlog
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up on a slow answer is the point, not an error


def main(upstream: str, slow_seconds: float) -> None:
    liar = _Liar(upstream, slow_seconds)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            liar.handle(self, self.rfile.read(int(self.headers.get("Content-Length", "0"))))

        def do_GET(self) -> None:  # noqa: N802
            liar.tally(self)

    server = _QuietServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
