"""The dashboard's web application: ``create_app(chainflow, token=...)`` is an ASGI app
(Starlette) that ``chainflow ui`` serves with uvicorn, bound to 127.0.0.1 by default.

Safety: every page reads (``reads``); the three actions that write (signal, cancel,
retry) go through the client API after ``security.action_form`` let them through, and
answer with a redirect back to the run.  A bad query parameter, an unknown run or a
refused action is a small HTML page with a 4xx status that names the problem
(``params.BadRequest``); anything else is a 500 page without a traceback (the log has
it).  No page shows a private key: chains are shown by name and sender address, a
database by its URL without the password, candidates by hash and fees, never raw.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..client.app import Chainflow
from ..client.timeline import duration, when
from ..errors import (
    ChainflowError,
    PayloadError,
    RunFinishedError,
    RunNotDeadLetteredError,
    RunNotFoundError,
    UnknownWorkflowError,
)
from ..states import RunState, SubmissionState
from ..storage import codec, limits
from ..storage.connector import shown
from ..threads import offload
from . import charts, params, reads, values
from .params import BadRequest, Query
from .security import action_form

log = logging.getLogger("chainflow.ui")
HERE = Path(__file__).parent
PAGE = 50  # runs or submissions per page
MAX_LIVE = 200  # submissions one live stream follows
MAX_ID = 2**63 - 1  # the largest id the tables hold (BIGINT); a larger one is a 400, not a driver error
WINDOW_BUCKETS = {900: 60, 3600: 60, 21600: 300, 86400: 900, 604800: 7200}  # window -> seconds per bar


def create_app(app: Chainflow, *, token: str | None = None, poll: float = 1.0) -> Starlette:
    """``token``: None for a read-only dashboard.  ``poll``: seconds between two reads
    of a live stream (confirmations)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters.update(when=when, val=values.render, err=values.error)
    env.globals.update(duration=duration, RunState=RunState, SubmissionState=SubmissionState,
                       database=shown(app.engine.url), actions=token is not None,
                       cursor_of=params.cursor_of)

    def page(request: Request, name: str, code: int = 200, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, {**context, "code": code}, status_code=code)

    def runs(request: Request) -> Response:
        q = Query(request.query_params, ("q", "status", "workflow", "since", "until", "after"))
        search = q.text("q", limits.IDEMPOTENCY_KEY_LENGTH)
        if search is not None:
            found = reads.find_run(app, search.strip())
            if found is None:
                raise BadRequest(f"no run has the id or idempotency key {search!r}", 404)
            return RedirectResponse(f"/runs/{found}", 303)
        found_page = reads.runs_page(app, status=q.choice("status", [s.value for s in RunState]),
                                     workflow=q.text("workflow"), since=q.time("since"), until=q.time("until"),
                                     before=q.cursor("after"), limit=PAGE)
        partial = request.headers.get("hx-request") == "true" and request.headers.get("hx-target") == "runs-table"
        return page(request, "_runs_table.html" if partial else "runs.html", page=found_page, q=q.params,
                    filters={k: v for k, v in q.params.items() if k != "after"})

    def run(request: Request) -> Response:
        run_id = params.run_id(request.path_params["run_id"])
        q = Query(request.query_params, ("done",))
        return page(request, "run.html", run=reads.run_page(app, run_id), done=q.text("done"))

    async def replay(request: Request) -> Response:
        run_id = params.run_id(request.path_params["run_id"])
        Query(request.query_params, ())
        status = await app.astatus(run_id)
        try:
            report = await app.areplay(run_id)
        except UnknownWorkflowError as exc:
            raise BadRequest(f"{exc}: a replay runs the workflow's code, so start the dashboard with the app "
                             "(chainflow ui module:app)", 409) from None
        return page(request, "replay.html", status=status, report=report)

    async def act(request: Request) -> Response:
        run_id = params.run_id(request.path_params["run_id"])
        action = request.path_params["action"]
        form = await action_form(request, token)
        try:
            if action == "cancel":
                await app.acancel(run_id)
            elif action == "retry":
                await app.aretry(run_id)
            elif action == "signal":
                name = form.get("name", "").strip()
                if not name:
                    raise BadRequest("a signal needs a name")
                try:
                    payload = codec.parse_json(form.get("payload", "").strip() or "null", what="payload")
                except json.JSONDecodeError as exc:
                    raise BadRequest(f"the payload is not valid JSON: {exc}") from None
                await app.asignal(run_id, name, payload)
            else:
                raise BadRequest(f"unknown action {action!r} (signal, cancel, retry)", 404)
        except (RunFinishedError, RunNotDeadLetteredError) as exc:
            raise BadRequest(str(exc), 409) from None
        except (PayloadError, ValueError) as exc:
            raise BadRequest(str(exc)) from None
        log.warning("dashboard action %s on run %s", action, run_id)
        return RedirectResponse(f"/runs/{run_id}?done={action}", 303)

    def submissions(request: Request) -> Response:
        q = Query(request.query_params, ("chain", "state", "before"))
        found, next_before = reads.submissions_page(
            app, chain=q.text("chain"), state=q.choice("state", [s.value for s in SubmissionState]),
            before=q.integer("before", 1, MAX_ID), limit=PAGE)
        return page(request, "submissions.html", subs=found, next_before=next_before, q=q.params)

    async def chains(request: Request) -> Response:
        Query(request.query_params, ())
        return page(request, "chains.html", chains=await reads.chains_page(app), now=time.time())

    def charts_page(request: Request) -> Response:
        q = Query(request.query_params, ("window",))
        window_name = q.choice("window", params.SPANS) or "1h"
        window = params.SPANS[window_name]
        now = time.time()
        data = reads.charts(app, window=window, width=WINDOW_BUCKETS[window], now=now)
        return page(request, "charts.html", window=window_name, windows=list(params.SPANS),
                    runs_svg=charts.runs_per_bucket(data.counts, data.since, now, data.width),
                    steps_svg=charts.latency_bars(data.steps), confirm_svg=charts.latency_bars(data.confirmations),
                    data=data, colors=charts.COLORS)

    async def live(request: Request) -> Response:
        q = Query(request.query_params, ("ids",))
        text = q.text("ids", 20 * MAX_LIVE) or ""
        try:
            ids = sorted({int(part) for part in text.split(",") if part.strip()})
        except ValueError:
            raise BadRequest(f"ids must be submission ids separated by commas; got {text!r}") from None
        if not ids or len(ids) > MAX_LIVE:
            raise BadRequest(f"ids must name 1 to {MAX_LIVE} submissions")
        if ids[0] < 1 or ids[-1] > MAX_ID:
            raise BadRequest(f"ids must be between 1 and {MAX_ID}; got {text!r}")

        async def stream() -> AsyncIterator[str]:
            last, quiet = "", 0.0
            while True:
                found = await offload(reads.progress, app, ids)
                payload = json.dumps([c.to_dict() for c in found])
                if payload != last:
                    yield f"event: progress\ndata: {payload}\n\n"
                    last, quiet = payload, 0.0
                elif quiet >= 15:
                    yield ": still here\n\n"  # keeps proxies from closing an idle stream
                    quiet = 0.0
                if not any(c.live for c in found):
                    yield "event: done\ndata: {}\n\n"
                    return
                await asyncio.sleep(poll)
                quiet += poll

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def home(request: Request) -> Response:
        return RedirectResponse("/runs", 303)

    async def refused(request: Request, exc: Exception) -> Response:
        if isinstance(exc, BadRequest):
            status, message = exc.status, str(exc)
        elif isinstance(exc, RunNotFoundError):
            status, message = 404, str(exc)
        elif isinstance(exc, HTTPException):
            status, message = exc.status_code, exc.detail or "not found"
        elif isinstance(exc, ChainflowError):
            status, message = 409, str(exc)
        else:
            log.exception("dashboard error on %s", request.url.path, exc_info=exc)
            status, message = 500, f"internal error ({type(exc).__name__}); the dashboard's log has the details"
        return page(request, "error.html", status, message=message)

    routes = [
        Route("/", home),
        Route("/runs", runs),
        Route("/runs/{run_id}", run),
        Route("/runs/{run_id}/replay", replay),
        Route("/runs/{run_id}/{action}", act, methods=["POST"]),
        Route("/submissions", submissions),
        Route("/chains", chains),
        Route("/charts", charts_page),
        Route("/events/confirmations", live),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    handlers: dict[Any, Any] = {BadRequest: refused, RunNotFoundError: refused, HTTPException: refused,
                                ChainflowError: refused, Exception: refused}
    return Starlette(routes=routes, exception_handlers=handlers)
