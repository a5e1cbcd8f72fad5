"""The dashboard in a real headless Chromium (Selenium + Debian's chromium): filtering
the runs list, a run's timeline after a reorg rollback, a confirmations bar advancing
live as anvil mines, cancelling with and without the token.  Each page is
photographed into the test's tmp dir and docs/screenshots/ (the README shows them).
What the browser shows is checked against the tables, not against the page's own
claims."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import chainflow as cf
from chainflow.storage.schema import runs

from ..conftest import CallLog, require_anvil
from ._data import BIG, populate
from .conftest import TOKEN, shoot, wait_for


def by_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[cf.Chainflow]:
    app = cf.Chainflow(f"sqlite:///{tmp_path / 'ui.db'}")
    yield app
    app.engine.dispose()


async def test_runs_list_filters_by_status_and_finds_a_run_by_key(sqlite_app: cf.Chainflow, serve: Callable[..., Any],
                                                                  browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.support.ui import Select

    data = await populate(sqlite_app)
    site = serve(sqlite_app, TOKEN)
    browser.get(f"{site.url}/runs")
    assert len(by_css(browser, "tr.run-row")) == 7
    shoot(browser, tmp_path, "runs.png")

    browser.execute_script("window.__same_page = 1")
    Select(by_css(browser, "#f-status")[0]).select_by_value("failed")  # htmx swaps the table in place
    wait_for(browser, lambda d: {r.get_attribute("data-status") for r in by_css(d, "tr.run-row")} == {"failed"},
             what="only failed runs listed")
    wait_for(browser, lambda d: {a.text for a in by_css(d, "tr.run-row td.mono a")} == set(data.failed),
             what="the failed runs' ids")
    assert browser.execute_script("return window.__same_page") == 1, "filtered without a page load"
    assert "status=failed" in browser.current_url, "the filter is in the address (shareable)"

    browser.get(f"{site.url}/runs?status=completed&workflow=payout")
    assert {a.text for a in by_css(browser, "tr.run-row td.mono a")} == set(data.completed)

    search = by_css(browser, "#search")[0]
    search.send_keys("order-2")
    search.submit()
    wait_for(browser, lambda d: d.current_url.endswith(f"/runs/{data.completed[2]}"), what="the run found by key")
    assert str(BIG + 2) in by_css(browser, "#run-output")[0].text, "the exact wei amount"

    browser.get(f"{site.url}/charts?window=15m")
    bars = by_css(browser, "#runs-chart rect")
    assert bars and any("failed" in (b.get_attribute("innerHTML") or "") for b in bars)
    assert "quote" in by_css(browser, "#steps-chart")[0].get_attribute("innerHTML")
    shoot(browser, tmp_path, "charts.png")


async def test_cancel_needs_the_token(sqlite_app: cf.Chainflow, serve: Callable[..., Any], browser: Any,
                                      tmp_path: Path) -> None:
    data = await populate(sqlite_app, completed=0, failed=0, waiting=1)
    run_id = data.waiting[0]

    def requested() -> bool:
        with sqlite_app.engine.connect() as conn:
            return bool(conn.execute(sa.select(runs.c.cancel_requested).where(runs.c.id == run_id)).scalar_one())

    read_only = serve(sqlite_app)
    browser.get(f"{read_only.url}/runs/{run_id}")
    assert not by_css(browser, "#cancel") and "read-only dashboard" in browser.page_source

    site = serve(sqlite_app, TOKEN)
    for typed, says in (("", "needs the dashboard's token"), ("not-the-token", "wrong token")):
        browser.get(f"{site.url}/runs/{run_id}")
        field = by_css(browser, "#cancel-form input.token")[0]
        field.clear()
        if typed:
            field.send_keys(typed)
        by_css(browser, "#cancel")[0].click()
        message = wait_for(browser, lambda d: by_css(d, "#error-message"), what="the refusal page")[0].text
        assert says in message and "403" in browser.title
        assert not requested(), "a refused cancel must not reach the table"

    browser.get(f"{site.url}/runs/{run_id}")
    shoot(browser, tmp_path, "run-actions.png")
    field = by_css(browser, "#cancel-form input.token")[0]
    field.clear()
    field.send_keys(TOKEN)
    by_css(browser, "#cancel")[0].click()
    wait_for(browser, lambda d: by_css(d, "#flash"), what="back on the run")
    assert requested()
    assert by_css(browser, "#cancel-requested") or by_css(browser, "#run-status")[0].text == "cancelled"


async def test_a_reorg_rollback_shows_invalidated_entries_struck_through(
        tmp_path: Path, serve: Callable[..., Any], browser: Any) -> None:
    from devnet import InProcessEVM, reorg

    from ..reorg._rig import Rig, register_mint_flow

    with InProcessEVM() as net:
        rig = Rig(net, f"sqlite:///{tmp_path / 'reorg.db'}", CallLog(tmp_path / "ledger.log"))
        try:
            register_mint_flow(rig, cf.Confirmations(2))
            async with rig.worker():
                await rig.step()
                h = await rig.app.astart("mint_flow", {"id": "order-1"})
                await rig.drive(lambda: rig.app.status(h.id).done, what="the first completion")
                block = int(rig.sub("order-1").block_number)
                await rig.step()
                reorg(net, rig.head() - block + 2)
                await rig.step()
                await rig.drive(lambda: rig.app.status(h.id).status == "completed", what="the re-completion")
            key = str(net.accounts()[0].private_key).lower().removeprefix("0x")
        finally:
            await rig.close()
    app = cf.Chainflow(f"sqlite:///{tmp_path / 'reorg.db'}")
    invalidated = [e for e in app.journal(h.id) if e.invalidated]
    assert {e.key for e in invalidated} >= {"credit", "notify"}
    (event,) = app.reorgs()

    site = serve(app, TOKEN)
    browser.get(f"{site.url}/runs/{h.id}")
    rows = by_css(browser, "tr.entry.invalidated")
    assert len(rows) == len(invalidated)
    for row in rows:
        cell = row.find_element("css selector", "td")
        assert "line-through" in cell.value_of_css_property("text-decoration"), "struck through"
        link = row.find_element("css selector", ".invalid-reason a")
        assert link.get_attribute("href").endswith(f"/chains#reorg-{event.id}")
        assert f"reorg #{event.id} on local" in link.text
    live = [r.get_attribute("data-key") for r in by_css(browser, "tr.entry:not(.invalidated)")]
    assert live.count("credit") == 1 and live.count("notify") == 1, live
    shoot(browser, tmp_path, "run-reorg.png")

    browser.get(f"{site.url}/chains")
    row = by_css(browser, f"#reorg-{event.id}")[0]
    assert h.id in row.text and str(event.depth) in row.text
    shoot(browser, tmp_path, "chains.png")
    for page in ("/runs", f"/runs/{h.id}", "/submissions", "/chains", "/charts"):
        browser.get(site.url + page)
        assert key not in browser.page_source.lower(), f"the signing key shown on {page}"
    app.engine.dispose()


@pytest.mark.anvil
async def test_confirmations_advance_live_as_anvil_mines(tmp_path: Path, serve: Callable[..., Any],
                                                         browser: Any) -> None:
    require_anvil()
    from adapters.evm import EvmChain, LocalSigner
    from devnet import Anvil

    from ..reorg._rig import CHAIN, Rig, register_mint_flow

    def label() -> str:
        return str(by_css(browser, "#sub-1 .confirm-label")[0].text)

    async def shows(text: str) -> None:
        await asyncio.to_thread(wait_for, browser, lambda d: text in label(), 20, f"the bar to show {text!r}")

    with Anvil() as net:
        url = f"sqlite:///{tmp_path / 'live.db'}"
        rig = Rig(net, url, CallLog(tmp_path / "ledger.log"))
        # the dashboard's own app, as `chainflow ui myapp:app` would load it: its chain asks the node
        ui_app = cf.Chainflow(url, chains=[EvmChain(CHAIN, net.rpc_url, LocalSigner.from_key(rig.minter.private_key))])
        try:
            register_mint_flow(rig, cf.Confirmations(6))
            site = serve(ui_app)
            async with rig.worker():
                await rig.step()
                h = await rig.app.astart("mint_flow", {"id": "order-7"})
                await rig.wait_status(h.id, ("waiting",))
                sub = rig.sub("order-7")
                block = rig.mined_block(rig.attempts(sub.id)[0].tx_hash)
                await rig.step()
                assert rig.sub("order-7").state == "included"
                await asyncio.to_thread(browser.get, f"{site.url}/submissions")
                first = rig.head() - block + 1
                await shows(f"{first}/6 confirmations")
                browser.execute_script("window.__same_page = 1")
                for n in (first + 1, first + 2):
                    await rig.mine(1)
                    await rig.step()  # the tracker stores the head: the stream sends the new count
                    await shows(f"{n}/6 confirmations")
                assert rig.head() - block + 1 == first + 2, "the count the bar shows is the chain's"
                await asyncio.to_thread(shoot, browser, tmp_path, "submissions.png")
                await rig.drive(lambda: rig.app.status(h.id).done, what="the run to finish")
                await shows("final (6/6 confirmations)")
                assert rig.sub("order-7").state == "final"
                assert browser.execute_script("return window.__same_page") == 1, "updated live, never reloaded"
                wait_for(browser, lambda d: by_css(d, "#sub-1")[0].get_attribute("data-state") == "final",
                         what="the row's state")
            assert (await rig.status(h.id)).status == "completed"
        finally:
            await rig.close()
            for chain in ui_app.chains.values():
                await chain.aclose()
            ui_app.engine.dispose()
