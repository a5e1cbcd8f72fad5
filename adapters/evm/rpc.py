"""JSON-RPC calls, raw results, classified failures.

The adapter needs the node's *own* error text to classify broadcasts ("already known",
"nonce too low"...) and must tell a node's answer apart from a transport failure, which
web3's formatted ``w3.eth.*`` methods blur (and they add middleware round trips: chain-id
validation, gas estimation).  So results stay raw JSON, and every failure becomes
``RpcError`` (the node answered), ``RpcUnavailable`` (it did not, or we could not
read it) or ``EndpointError`` (the URL answered with a redirect or a 4xx: a
configuration problem, never followed or retried at outage pace).

Given a URL, calls are plain JSON-RPC POSTs on a keep-alive aiohttp session per event
loop: the head follower makes several calls per block, and web3's request manager
(caching layer, lock, response formatters) cost about as much CPU as the HTTP exchange
itself.  There are no automatic retries: the engine owns retries, and a silent re-send
of ``eth_sendRawTransaction`` inside one broadcast call would hide what happened.  The
one exception is a pooled connection the server closed while idle, retried once on a
fresh connection, which is harmless even for a broadcast (the second answer is
"already known" at worst).  Reads asked together (a receipt and its transaction) go
as one JSON-RPC batch, one exchange instead of two, and so do calls made concurrently:
those issued in one round of the event loop (a worker's runs estimating and
broadcasting, the tracker fetching a block's receipts) share one exchange, each still
answered or failed on its own, and a lone call stays a plain request.  A node, or a
proxy before it, that does not take batches (refusing them, or failing them with a 5xx
while answering the same calls one at a time) is found out on first use and asked one
call at a time from then on.  Given a web3 provider or instance instead, calls go through
web3's request manager with no middleware; a synchronous provider (e.g. web3's
``EthereumTesterProvider``) runs in a worker thread, one call at a time, so it does not
block the event loop and the in-process chain never sees concurrent requests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import yarl
from web3 import AsyncWeb3, Web3
from web3.exceptions import BadResponseFormat, ProviderConnectionError, Web3RPCError
from web3.providers import AsyncHTTPProvider, BaseProvider, HTTPProvider
from web3.providers.async_base import AsyncBaseProvider

from chainflow.chain.adapter import EndpointError

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

_HEADERS = {"Content-Type": "application/json"}
# calls of one loop round per batch: nodes and providers cap batches (often at 100-1,000)
_MOST_PER_BATCH = 100


def _misconfigured(status: int) -> bool:
    """An HTTP status that a retry at outage pace will not change: a redirect, or a
    4xx other than 408 (request timeout) and 429 (rate limited), which are transient."""
    return 300 <= status < 400 or (400 <= status < 500 and status not in (408, 429))


def _refuse_redirects(provider: Any) -> None:
    """web3's HTTP providers follow redirects (requests' and aiohttp's default); turn
    that off in the provider's request options, which every one of its POSTs uses.  A
    redirect then reaches us as an unreadable answer (``RpcUnavailable``), and nothing
    is sent to the redirect target."""
    if isinstance(provider, (HTTPProvider, AsyncHTTPProvider)):
        # web3 keeps the options privately; its constructor is the only public way in
        provider._request_kwargs = {**(provider._request_kwargs or {}), "allow_redirects": False}


def redact_url(url: str) -> str:
    """``scheme://host:port/…``: provider URLs often carry an API key in the path or
    query, and error texts end up in logs and in the journal."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    tail = "/…" if (parts.path not in ("", "/") or parts.query) else ""
    return f"{parts.scheme}://{host}{port}{tail}"


def _dumps(method: str, request: Any) -> str:
    try:
        return json.dumps(request)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{method}: parameters are not JSON-serialisable ({exc})") from None


def _result(method: str, answer: Any) -> Any:
    """One JSON-RPC answer's ``result``; its ``error`` raised as ``RpcError``."""
    if not isinstance(answer, dict) or ("result" not in answer and "error" not in answer):
        raise BadResponseFormat(f"not a JSON-RPC response: {str(answer)[:200]}")
    error = answer.get("error")
    if error is not None:
        if not isinstance(error, dict):
            error = {"message": str(error)}
        raise RpcError(method, int(error.get("code", 0) or 0), str(error.get("message", "")), error.get("data"))
    return answer.get("result")


@dataclass(eq=False)
class _Call:
    """A call waiting for the end of the loop round, to go out with the others."""

    method: str
    params: list[Any]
    body: str  # as a plain request, if it ends up going alone
    answer: asyncio.Future[Any]


def _settle(call: _Call, outcome: Any) -> None:
    if call.answer.done():  # its caller gave up (cancelled)
        return
    if isinstance(outcome, BaseException):
        call.answer.set_exception(outcome)
    else:
        call.answer.set_result(outcome)


class _Http:
    """JSON-RPC over HTTP with one keep-alive session per event loop (a session cannot
    outlive or cross its loop; tests and tools run several loops over one adapter)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.batches = True  # until the node refuses one
        self.exchanges = 0  # HTTP round trips (a batch is one)
        # per event loop: calls gathering until the end of the loop round
        self._waiting: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
        self._sending: set[asyncio.Task[None]] = set()  # referenced until done

    def encode(self, method: str, params: list[Any]) -> str:
        """The request body; params that are not JSON are a caller's bug, not an outage."""
        return _dumps(method, {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params})

    async def request(self, method: str, params: list[Any], body: str) -> Any:
        """One call's result (``body``: its plain request); calls made in the same loop
        round share one batch."""
        if not self.batches:
            return _result(method, await self._exchange(method, body))
        loop = asyncio.get_running_loop()
        call = _Call(method, params, body, loop.create_future())
        waiting = self._waiting.setdefault(loop, [])
        waiting.append(call)
        if len(waiting) == 1:
            loop.call_soon(self._go, loop)
        return await call.answer

    def _go(self, loop: asyncio.AbstractEventLoop) -> None:
        calls = self._waiting.pop(loop, [])
        for i in range(0, len(calls), _MOST_PER_BATCH):
            task = loop.create_task(self._send(calls[i:i + _MOST_PER_BATCH]))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call]) -> None:
        """``calls`` in one exchange when there are several and the node takes batches;
        each call's outcome to its own caller.

        A 5xx to a batch is an outage or a node (or proxy, or provider capping batch
        sizes) that fails batches only: the first call is sent alone to tell which.
        Answered, batches are off as after a refusal; not, every caller gets that
        failure and nothing more is sent to a node that is down."""
        failed_batch: aiohttp.ClientResponseError | None = None
        if len(calls) > 1 and self.batches:
            try:
                answers = await self._batch([(c.method, c.params) for c in calls])
            except aiohttp.ClientResponseError as exc:  # a 5xx (a 4xx is a refusal: ``_batch``)
                answers, failed_batch = None, exc
            except Exception as exc:  # noqa: BLE001 - an outage: each caller raises it
                for call in calls:
                    _settle(call, exc)
                return
            if answers is not None:
                for call, answer in zip(calls, answers):
                    try:
                        _settle(call, _result(call.method, answer))
                    except Exception as exc:  # noqa: BLE001 - this call's own error
                        _settle(call, exc)
                return
            if failed_batch is None:
                self.batches = False  # refused: one call at a time from now on
        for call in calls:
            try:
                answer = await self._exchange(call.method, call.body)
            except Exception as exc:  # noqa: BLE001 - raised where its caller awaits
                if failed_batch is None:
                    _settle(call, exc)
                    continue
                for unsent in calls:  # the probe failed too: an outage
                    _settle(unsent, exc)
                return
            if failed_batch is not None:
                self.batches, failed_batch = False, None  # answered alone, failed in a batch
            try:
                _settle(call, _result(call.method, answer))
            except Exception as exc:  # noqa: BLE001 - this call's own error
                _settle(call, exc)

    async def _batch(self, calls: list[tuple[str, list[Any]]]) -> list[Any] | None:
        """The answers to ``calls`` from one batch, in order; None when the answer looks
        like a refusal of batches: anything but one answer per call, a 4xx, or the
        connection dropped or garbled (a proxy that cannot parse a batch).  Timeouts,
        refused connections and 5xx raise as for one call (``_send`` probes after a 5xx)."""
        ids = [next(self._ids) for _ in calls]
        body = _dumps(calls[0][0], [{"jsonrpc": "2.0", "id": i, "method": method, "params": params}
                                    for i, (method, params) in zip(ids, calls)])
        try:
            answers = await self._exchange(calls[0][0], body)
        except (EndpointError, aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, json.JSONDecodeError):
            return None
        by_id = {a.get("id"): a for a in answers if isinstance(a, dict)} if isinstance(answers, list) else {}
        if set(by_id) != set(ids):
            return None
        return [by_id[i] for i in ids]

    async def _exchange(self, method: str, body: str) -> Any:
        self.exchanges += 1
        try:
            return await self._post(await self._session(), method, body)
        except aiohttp.ServerDisconnectedError:
            return await self._post(await self._session(), method, body)  # stale pooled connection

    async def _post(self, session: aiohttp.ClientSession, method: str, body: str) -> Any:
        # never follow a redirect: a 307/308 would re-send a signed transaction to
        # another origin, a 301/302 would turn into a GET whose answer is a stranger's
        async with session.post(self.url, data=body, headers=_HEADERS, allow_redirects=False) as response:
            if _misconfigured(response.status):
                raise EndpointError(redact_url(self.url), response.status, method, response.reason or "")
            response.raise_for_status()  # 5xx: the node is down or overloaded, retryable
            return json.loads(await response.read())

    async def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is not None and not session.closed:
            return session
        for old in self._take(lambda other: other.is_closed()):
            await old.close()  # its loop is gone: closing only marks it closed
        with self._lock:
            session = self._sessions[loop] = aiohttp.ClientSession(
                timeout=self._timeout, connector=aiohttp.TCPConnector(limit=64))
        return session

    async def aclose(self) -> None:
        """Close this loop's session (and those of loops that have ended)."""
        loop = asyncio.get_running_loop()
        for session in self._take(lambda other: other is loop or other.is_closed()):
            await session.close()

    def _take(self, which: Callable[[asyncio.AbstractEventLoop], bool]) -> list[aiohttp.ClientSession]:
        """Forget the sessions of the loops ``which`` picks; returns them to close."""
        with self._lock:
            return [self._sessions.pop(loop) for loop in [lp for lp in self._sessions if which(lp)]]


class Rpc:
    def __init__(self, target: RpcTarget, *, timeout: float) -> None:
        self._lock = threading.Lock()
        self._http: _Http | None = None
        self._sync: Web3 | None = None
        self._async: AsyncWeb3[Any] | None = None
        if isinstance(target, str):
            parts = urlsplit(target)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"rpc must be an http(s) URL with a host (or a web3 provider), got "
                                 f"{redact_url(target)!r}")
            self._http = _Http(target, timeout)
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
        # the URL whose secrets (userinfo, an API key in the path or query) error texts
        # must not carry: a URL target's, or an HTTP provider's endpoint
        self._url: str | None = target if isinstance(target, str) else None
        if self._http is None:
            provider = (self._async or self._sync).provider  # type: ignore[union-attr]
            _refuse_redirects(provider)
            endpoint = getattr(provider, "endpoint_uri", None)
            self._url = str(endpoint) if endpoint else None
        self.calls = 0  # JSON-RPC calls made
        self._exchanges = 0  # round trips of a provider target (each call is one)

    def __repr__(self) -> str:
        if self._http is not None:
            return f"Rpc({redact_url(self._http.url)})"
        return f"Rpc({type((self._async or self._sync).provider).__name__})"  # type: ignore[union-attr]

    def _clean(self, text: str) -> str:
        """Error text with the URL's path and query (where keys live) masked, in the
        forms aiohttp may quote it in."""
        url = self._url
        if url is None:
            return text
        parts = urlsplit(url)
        for secret in (url, str(yarl.URL(url))):
            text = text.replace(secret, redact_url(url))
        for secret in (parts.path if parts.path not in ("", "/") else "", parts.query):
            if secret:
                text = text.replace(secret, "…")
        return text

    @property
    def exchanges(self) -> int:
        """Round trips to the node the calls took (a batch is one)."""
        return self._http.exchanges if self._http is not None else self._exchanges

    async def call(self, method: str, *params: Any) -> Any:
        """The raw ``result`` of ``method``; raises ``RpcError`` / ``RpcUnavailable``."""
        self.calls += 1
        if self._http is not None:
            body = self._http.encode(method, list(params))  # a caller's bug raises here, as itself
            return await self._translated(method, self._http.request(method, list(params), body))
        self._exchanges += 1
        if self._async is None:
            return await self._translated(method, asyncio.to_thread(self._blocking, method, list(params)))
        pending = self._async.manager.coro_request(method, list(params))  # type: ignore[arg-type]
        return await self._translated(method, pending)

    async def call_all(self, *calls: tuple[str, list[Any]]) -> list[Any]:
        """The raw results of several reads, in order, as ``call`` would give them one
        after another (the first failed call raises), in one JSON-RPC batch (one HTTP
        exchange, shared with whatever else is asked in the same loop round) when the
        target is a URL whose node takes batches.  Reads only: a batch is re-sent whole
        on a stale connection."""
        if self._http is None or not self._http.batches:
            return [await self.call(method, *params) for method, params in calls]
        return list(await asyncio.gather(*(self.call(method, *params) for method, params in calls)))

    async def _translated(self, method: str, answer: Awaitable[Any]) -> Any:
        """``answer``, with its failure raised as ``RpcError`` (the node answered with
        an error), ``RpcUnavailable`` (no readable answer) or ``EndpointError``."""
        try:
            return await answer
        except (RpcError, EndpointError):
            raise
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
            if self._http is not None:
                raise RpcUnavailable(method, self._clean(f"{type(exc).__name__}: {exc}")) from None
            message = self._clean(str(exc))
            raise RpcError(method, 3 if "revert" in message.lower() else -32000, message) from None

    def _blocking(self, method: str, params: list[Any]) -> Any:
        assert self._sync is not None
        with self._lock:
            return self._sync.manager.request_blocking(method, params)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        """Close the HTTP sessions: they are bound to the current event loop.  Harmless
        for a caller's provider too, which opens a new session on next use."""
        if self._http is not None:
            await self._http.aclose()
            return
        if self._async is None:
            return
        disconnect = getattr(self._async.provider, "disconnect", None)
        if disconnect is not None:
            await disconnect()
