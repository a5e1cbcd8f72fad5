"""Who may change anything: the dashboard is read-only unless it was started with a
token, and an action (signal, cancel, retry) must carry that token in its form and come
from a page of this dashboard.

The token travels in a form field, never in a cookie, so a page on another site cannot
make the browser send it (cross-site request forgery needs an ambient credential); the
same-origin check (``Origin`` / ``Sec-Fetch-Site``) refuses cross-site posts before the
token is even compared, and the comparison takes constant time."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs

from starlette.requests import Request

from .params import BadRequest

TOKEN_ENV = "CHAINFLOW_UI_TOKEN"
MAX_FORM = 64 * 1024  # an action's form: a signal payload, not an upload


def check_token(token: str | None) -> str | None:
    if token is not None and len(token) < 12:
        raise ValueError(f"the dashboard token must be at least 12 characters (--token or {TOKEN_ENV})")
    return token


def same_origin(request: Request) -> bool:
    """A browser tells where a request comes from; a request that says nothing is no
    browser's (curl, a script), which the token alone guards."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin == f"{request.url.scheme}://{request.url.netloc}"


async def action_form(request: Request, token: str | None) -> dict[str, str]:
    """The form of an action, once it is allowed: 403 for a read-only dashboard, a
    cross-site request or a wrong token; 4xx for a form that is no form."""
    if token is None:
        raise BadRequest(f"this dashboard is read-only: start it with --token (or {TOKEN_ENV}) to allow actions",
                         403)
    if not same_origin(request):
        raise BadRequest("refused: the request does not come from a page of this dashboard (cross-site)", 403)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise BadRequest("an action is a form post (application/x-www-form-urlencoded)", 415)
    body = await request.body()
    if len(body) > MAX_FORM:
        raise BadRequest(f"the form is larger than {MAX_FORM} bytes", 413)
    try:
        fields = {k: v[-1] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
    except UnicodeDecodeError:
        raise BadRequest("the form is not UTF-8") from None
    given = fields.pop("token", "")
    if not given:
        raise BadRequest("this action needs the dashboard's token: type it in the token field", 403)
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise BadRequest("wrong token: the action was not carried out", 403)
    return fields
