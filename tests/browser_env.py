"""A real browser for the dashboard tests: Debian's headless Chromium driven by Playwright.

Playwright's own browser download does not work on these machines, so the
browser is always the system's ``chromium`` (``/usr/bin/chromium``). Where it
is missing the browser tests skip with the reason — unless
QKAN_TEST_REQUIRE_BROWSER=1 (set by .ci/run, which installs it), which turns
"unavailable" into a failure so CI cannot skip them silently.

The browser is started here, once per module, rather than through
pytest-playwright's session-wide ``browser``/``page`` fixtures: those would
keep Playwright's event loop alive for the rest of the session, beside test
modules that run asyncio and threads of their own.
"""

import io
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

import service_env
from conftest import make_model
from qkan_orch.client import Client
from qkan_orch.models import save_model

CHROMIUM = "/usr/bin/chromium"
WIDE, NARROW = 1280, 390  # a laptop and a phone, in CSS pixels
LIVE = 15_000  # ms: a live region refreshes every 1.5 s; generous, so a slow machine is not a failure


def unavailable(reason: str) -> NoReturn:
    return service_env.unavailable(reason, "QKAN_TEST_REQUIRE_BROWSER")


def chromium_path() -> str:
    """Debian's Chromium (or another ``chromium`` on PATH); never a browser Playwright would download."""
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        unavailable(f"no Chromium at {CHROMIUM} or on PATH (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def chromium() -> Iterator["Browser"]:
    """One headless Chromium for the module, stopped with it."""
    path = chromium_path()
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=path, headless=True)
        except PlaywrightError as exc:
            unavailable(f"{path} did not start: {exc.message.splitlines()[0]}")
        yield browser
        browser.close()


class ConsoleErrors:
    """Every console error and uncaught page exception in the contexts it watches.

    A page the server deliberately answers with an error status (a refused sign-in is 401, a job this key
    cannot see is 404) makes Chromium log "Failed to load resource"; ``expect_status`` excuses exactly that
    message for that URL, so any other error still counts.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._expected: set[tuple[str, int]] = set()

    def watch(self, context: "BrowserContext") -> None:
        context.on("console", self._console)
        context.on("weberror", lambda error: self.errors.append(f"uncaught: {error.error}"))

    def expect_status(self, url: str, status: int) -> None:
        self._expected.add((url, status))

    def _console(self, message: "ConsoleMessage") -> None:
        if message.type != "error":
            return
        url = message.location.get("url", "")
        failed = re.match(r"Failed to load resource: the server responded with a status of (\d+)", message.text)
        if failed and (url, int(failed.group(1))) in self._expected:
            return
        self.errors.append(f"{message.text} ({url})")

    def take(self) -> list[str]:
        errors, self.errors, self._expected = self.errors, [], set()
        return errors


def sign_in(page: "Page", key: str) -> None:
    """Through the form, as a person would; lands on the Overview."""
    page.goto("/dashboard/sign-in")
    page.locator("#api_key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/dashboard$"))


class LogCapture(logging.Handler):
    """Every line the in-process API logs, as formatted (after the service's own redaction filters)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {self.format(record)}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@contextmanager
def api_logs() -> Iterator[LogCapture]:
    """Capture this process's logs — ours, uvicorn's and its access log (paths included; turned on to INFO for
    the duration, as a deployment would have it) — so a test can say what never reaches them."""
    capture = LogCapture()
    names = ["", "qkan", "uvicorn", "uvicorn.error", "uvicorn.access"]  # uvicorn's loggers do not propagate
    access = logging.getLogger("uvicorn.access")
    level = access.level
    for name in names:
        logging.getLogger(name).addHandler(capture)
    access.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        access.setLevel(level)
        for name in names:
            logging.getLogger(name).removeHandler(capture)


def upload_small_model(client: Client, folder: Path) -> str:
    """A 2-2-1 model (two rounds on a backend): enough for the pages, quick on every simulator."""
    path = folder / "model.safetensors"
    save_model(make_model(width=[2, 2, 1], reps=2), str(path))
    return client.upload_model(path).id


def pixel_spread(png: bytes) -> float:
    """Standard deviation of a screenshot's grey levels: ~0 for a blank (single-colour) page."""
    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64).std())
