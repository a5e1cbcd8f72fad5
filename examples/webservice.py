"""A small web service in front of chainflow, the way backend services use it: a
request starts a workflow through the client API with the request's idempotency key
(a client retrying after a timeout gets the same run back, never a second payment),
answers with the run id at once, and serves the run's status; workers execute the
runs elsewhere (``chainflow worker examples.webservice:app``).

    POST /runs/{workflow}        body: the input (JSON); header Idempotency-Key required
                                 -> 201 {"run_id", "created": true}, or 200 for a repeat
    GET  /runs/{run_id}          -> the run's status, output or error
    POST /runs/{run_id}/signals/{name}   body: the payload -> 202

Serve it with ``uvicorn examples.webservice:web`` (the ``web`` extra installs
Starlette and uvicorn); the compose file runs it beside a worker.  It serves the
approval workflow of ``examples.approval``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import chainflow as cf

from . import approval
from .ledger import Ledger


def create_web(app: cf.Chainflow) -> Starlette:
    async def start(request: Request) -> JSONResponse:
        key = request.headers.get("idempotency-key")
        if not key:
            return _error(400, "the Idempotency-Key header is required: retries must not start a second run")
        try:
            handle = await app.astart(request.path_params["workflow"], await request.json(), idempotency_key=key)
        except json.JSONDecodeError as exc:
            return _not_json(exc)
        except cf.UnknownWorkflowError as exc:
            return _error(404, str(exc))
        except cf.InputValidationError as exc:
            return _error(422, str(exc))
        except cf.IdempotencyConflictError as exc:
            return _error(409, str(exc))
        except ValueError as exc:  # an Idempotency-Key the engine cannot store (too long, a NUL)
            return _error(400, str(exc))
        return JSONResponse({"run_id": handle.id, "created": handle.created}, status_code=201 if handle.created
                            else 200)

    async def status(request: Request) -> JSONResponse:
        try:
            st = await app.astatus(request.path_params["run_id"])
        except cf.RunNotFoundError as exc:
            return _error(404, str(exc))
        error = None if st.error is None else {"type": st.error.get("type"), "message": st.error.get("message")}
        return JSONResponse({"run_id": st.id, "workflow": st.workflow, "status": st.status.value,
                             "output": st.output, "error": error, "waiting_on": st.waiting_on})

    async def signal(request: Request) -> JSONResponse:
        try:
            await app.asignal(request.path_params["run_id"], request.path_params["name"], await request.json())
        except json.JSONDecodeError as exc:
            return _not_json(exc)
        except cf.RunNotFoundError as exc:
            return _error(404, str(exc))
        except cf.RunFinishedError as exc:
            return _error(409, str(exc))
        except ValueError as exc:  # a signal name the engine cannot store
            return _error(400, str(exc))
        return JSONResponse({"sent": request.path_params["name"]}, status_code=202)

    return Starlette(routes=[
        Route("/runs/{workflow}", start, methods=["POST"]),
        Route("/runs/{run_id}", status, methods=["GET"]),
        Route("/runs/{run_id}/signals/{name}", signal, methods=["POST"]),
    ])


def _error(code: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=code)


def _not_json(exc: json.JSONDecodeError) -> JSONResponse:
    # a ValueError too: caught before the engine's ValueErrors, which name an argument
    return _error(400, f"the body is not JSON: {exc}")


def _from_env() -> tuple[cf.Chainflow, Starlette]:
    ledger = Ledger(Path(os.environ.get("EXAMPLE_LEDGER", "ledger.db")))
    app_ = approval.build(os.environ.get("CHAINFLOW_DATABASE_URL", "sqlite:///chainflow.db"), ledger)
    return app_, create_web(app_)


def __getattr__(name: str) -> Any:
    """``app`` and ``web`` are built on first use, from the environment: importing the
    module (a test, a type checker) opens no database."""
    if name in ("app", "web"):
        app_, web_ = _from_env()
        globals().update(app=app_, web=web_)
        return globals()[name]
    raise AttributeError(name)
