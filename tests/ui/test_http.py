"""The dashboard over HTTP (a real uvicorn, no browser), on SQLite and Postgres: exact
values, clear 4xx pages for bad input, and actions refused unless the token and the
origin are right, checked in the tables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.storage.schema import runs, signals

from ._data import BIG, PRICE, populate
from .conftest import TOKEN


def cancel_requested(app: cf.Chainflow, run_id: str) -> bool:
    with app.engine.connect() as conn:
        return bool(conn.execute(sa.select(runs.c.cancel_requested).where(runs.c.id == run_id)).scalar_one())


async def test_run_page_shows_exact_values_and_the_runs_list_filters(make_app: Callable[..., Any],
                                                                     serve: Callable[..., Any]) -> None:
    data = await populate(make_app())
    site = serve(data.app)
    async with httpx.AsyncClient(base_url=site.url) as client:
        page = (await client.get(f"/runs/{data.completed[0]}")).text
        assert str(BIG) in page, "every digit of the wei amount"
        assert f"Decimal {PRICE}" in page and "0x00feff (3 bytes)" in page
        assert "2026-01-31T12:00:00+00:00" in page
        failed = (await client.get("/runs", params={"status": "failed"})).text
        assert failed.count('class="run-row"') == 2 and all(r in failed for r in data.failed)
        assert not any(r in failed for r in data.completed)
        by_key = await client.get("/runs", params={"q": "order-1"})
        assert by_key.status_code == 303 and by_key.headers["location"] == f"/runs/{data.completed[1]}"
        # keyset pages: 2 + 2 + 3 runs, newest first, each once
        seen: list[str] = []
        url = "/runs"
        while url:
            text = (await client.get(url)).text
            seen += [r for r in data.completed + data.failed + data.waiting if f'href="/runs/{r}"' in text]
            url = text.split('id="next-page" href="', 1)[1].split('"', 1)[0].replace("&amp;", "&") \
                if 'id="next-page"' in text else ""
            if len(seen) > 20:
                break
        assert sorted(seen) == sorted(data.completed + data.failed + data.waiting)


@pytest.mark.parametrize(("url", "status", "says"), [
    ("/runs?status=bogus", 400, "status must be one of pending, running"),
    ("/runs?colour=red", 400, "unknown query parameter 'colour'"),
    ("/runs?after=12_nope", 400, "after is not a page cursor"),
    ("/runs?since=yesterday", 400, "since must be an ISO time"),
    ("/runs?q=no-such-key", 404, "no run has the id or idempotency key 'no-such-key'"),
    ("/runs/not-a-run", 404, "'not-a-run' is not a run id"),
    ("/runs/00000000-0000-4000-8000-000000000000", 404, "00000000-0000-4000-8000-000000000000"),
    ("/submissions?before=-3", 400, "before must be between 1 and"),
    ("/submissions?state=lost", 400, "state must be one of intent"),
    ("/charts?window=2y", 400, "window must be one of 15m, 1h"),
    ("/events/confirmations?ids=1,x", 400, "ids must be submission ids"),
    ("/events/confirmations?ids=99999999999999999999", 400, "ids must be between 1 and"),
    ("/events/confirmations?ids=-4", 400, "ids must be between 1 and"),
    ("/nowhere", 404, "Not Found"),
])
async def test_bad_requests_get_a_clear_4xx_page(make_app: Callable[..., Any], serve: Callable[..., Any], url: str,
                                                 status: int, says: str) -> None:
    app = make_app()
    app.ensure_schema()
    async with httpx.AsyncClient(base_url=serve(app).url) as client:
        r = await client.get(url)
    assert r.status_code == status, r.text[:500]
    assert says in r.text.replace("&#39;", "'"), r.text[:800]
    assert "Traceback" not in r.text and 'id="error-message"' in r.text


async def test_actions_need_the_token_and_a_same_origin_request(make_app: Callable[..., Any],
                                                                serve: Callable[..., Any]) -> None:
    data = await populate(make_app(), completed=0, failed=0, waiting=1)
    run_id = data.waiting[0]
    read_only, guarded = serve(data.app), serve(data.app, TOKEN)
    async with httpx.AsyncClient(base_url=read_only.url) as client:
        r = await client.post(f"/runs/{run_id}/cancel", data={"token": TOKEN})
        assert r.status_code == 403 and "read-only" in r.text
        assert "Cancel run" not in (await client.get(f"/runs/{run_id}")).text
    async with httpx.AsyncClient(base_url=guarded.url) as client:
        refused = [
            (await client.post(f"/runs/{run_id}/cancel", data={"token": ""}), "needs the dashboard's token"),
            (await client.post(f"/runs/{run_id}/cancel", data={"token": "x" + TOKEN}), "wrong token"),
            (await client.post(f"/runs/{run_id}/cancel", data={"token": TOKEN},
                               headers={"Origin": "http://evil.example"}), "cross-site"),
            (await client.post(f"/runs/{run_id}/cancel", data={"token": TOKEN},
                               headers={"Sec-Fetch-Site": "cross-site"}), "cross-site"),
            (await client.post(f"/runs/{run_id}/signal", data={"token": "nope", "name": "approve"}), "wrong token"),
        ]
        for response, says in refused:
            assert response.status_code == 403 and says in response.text.replace("&#39;", "'"), response.text[:400]
        assert not cancel_requested(data.app, run_id)
        with data.app.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(signals)).scalar_one() == 0
        r = await client.post(f"/runs/{run_id}/signal", data={"token": TOKEN, "name": "approve", "payload": "{x"})
        assert r.status_code == 400 and "not valid JSON" in r.text
        r = await client.post(f"/runs/{run_id}/cancel", data={"token": TOKEN},
                              headers={"Origin": guarded.url, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 303 and r.headers["location"] == f"/runs/{run_id}?done=cancel"
    assert cancel_requested(data.app, run_id)


def test_the_ui_command_refuses_a_short_token_and_a_missing_database(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from chainflow.cli import cli

    missing = f"sqlite:///{tmp_path / 'nope.db'}"
    r = CliRunner().invoke(cli, ["--database-url", missing, "ui", "--token", "short"])
    assert r.exit_code == 2 and "at least 12 characters" in r.output
    r = CliRunner().invoke(cli, ["--database-url", missing, "ui"])
    assert r.exit_code == 1 and "no chainflow database at" in r.output
    assert not (tmp_path / "nope.db").exists()


def test_no_page_and_no_command_shows_the_database_password(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard's header and the CLI's banners and database errors name the
    database without its password: the userinfo one, and libpq's ``?password=``; a
    ``worker APP`` failing on the app's own database names that one, not the URL in the
    environment."""
    from click.testing import CliRunner
    from starlette.testclient import TestClient

    from chainflow.cli import cli
    from chainflow.ui.server import create_app

    app = cf.Chainflow("postgresql+psycopg://ops@db.internal:5432/prod?password=s3cretpw&sslmode=require")
    with TestClient(create_app(app), raise_server_exceptions=False) as client:
        r = client.get("/nowhere")  # any page: the error page needs no database
    assert r.status_code == 404 and "db.internal" in r.text and "s3cretpw" not in r.text

    (tmp_path / "notadb.db").write_bytes(b"garbage" * 500)  # "file is not a database"
    (tmp_path / "badapp_pw.py").write_text(f"import chainflow as cf\napp = cf.Chainflow('sqlite:///{tmp_path}/notadb.db')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for command in (["worker"], ["ui"]):
        out = CliRunner().invoke(cli, [*command, "badapp_pw:app"],
                                 env={"CHAINFLOW_DATABASE_URL": "postgresql://ops:s3cretpw@db.internal/prod"})
        assert out.exit_code == 1 and "notadb.db" in out.output and "s3cretpw" not in out.output, out.output
