"""The dashboard served for real (uvicorn on a free loopback port, in a thread) and a
real headless Chromium driving it (Debian's ``chromium`` + ``chromium-driver``, installed
by scripts/install-browser.sh; Selenium talks to chromedriver, nothing is downloaded).

Without the browser the browser tests are skipped with the install hint, except under
CI=true where that is a failure: CI must never go green without having looked."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import in_ci

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parent.parent.parent / "docs" / "screenshots"
TOKEN = "test-token-0123456789"


def require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if not missing:
        return
    message = f"{', '.join(missing)} not installed (bash scripts/install-browser.sh)"
    if in_ci():
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


class Served:
    """A running dashboard: its base URL, stopped at teardown."""

    def __init__(self, app: Any, token: str | None) -> None:
        import uvicorn

        from chainflow.ui.server import create_app

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(create_app(app, token=token, poll=0.2), host="127.0.0.1", port=port,
                                log_level="warning", timeout_graceful_shutdown=1, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="dashboard", daemon=True)
        self.thread.start()
        end = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > end:
                raise RuntimeError("the dashboard did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """``serve(app, token=None)`` -> a dashboard over ``app``'s database."""
    started: list[Served] = []

    def start(app: Any, token: str | None = None) -> Served:
        served = Served(app, token)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


@pytest.fixture(scope="session")
def _driver() -> Iterator[Any]:
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,1000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(_driver: Any) -> Iterator[Any]:
    """The session's headless Chromium, on a blank page with no stored token."""
    yield _driver
    _driver.get("about:blank")
    _driver.delete_all_cookies()


def shoot(driver: Any, tmp_path: Path, name: str) -> Path:
    """A screenshot of the whole page under the test's tmp dir, copied to
    docs/screenshots/ (what the README shows)."""
    height = driver.execute_script("return Math.max(document.body.scrollHeight, 700)")
    driver.set_window_size(1440, min(int(height) + 120, 2400))
    path = tmp_path / name
    assert driver.save_screenshot(str(path)), f"no screenshot of {name}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, SCREENSHOTS / name)
    driver.set_window_size(1440, 1000)
    return path


def wait_for(driver: Any, condition: Callable[[Any], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Polls `condition`; an element htmx swapped out between finding and
    reading it (stale) is one more poll, not a failure."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        condition, message=f"timed out: {what}")
