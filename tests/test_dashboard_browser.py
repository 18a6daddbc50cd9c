"""The dashboard in a real browser (issue 12, acceptance): sign-in and sign-out, live job states, cancel,
who sees which jobs, the comparison chart, no console errors, usable at 1280 px and 390 px.

One real service for the module (system Redis, PostgreSQL, one worker of two processes) and one headless
Chromium (tests/browser_env.py). The test backends of tests/support/plugin_backends.py hold a job running
(``test:counting``'s delay) or waiting at its "provider" (``test:pending``) for as long as a test needs.
Nothing here waits on a clock: live updates are awaited with Playwright's auto-waiting ``expect``.
"""

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from browser_env import (
    LIVE,
    NARROW,
    WIDE,
    ConsoleErrors,
    LogCapture,
    api_logs,
    chromium,
    pixel_spread,
    sign_in,
    upload_small_model,
)
from playwright.sync_api import Browser, Page, expect

from conftest import make_inputs
from qkan_orch.client import Client, Comparison, JobState
from qkan_orch.service.local import LocalService
from service_env import stack_env

pytestmark = pytest.mark.usefixtures("plugin_backends")
__all__ = ["chromium"]  # a fixture, used by name
DOCS = Path(__file__).resolve().parents[1] / "docs"
SAMPLES = 5
OpenAs = Callable[..., Page]


@pytest.fixture(scope="module")
def svc(chromium: Browser, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    """After the browser: without one the module skips before starting a service."""
    tmp = tmp_path_factory.mktemp("dashboard")
    with stack_env("system-redis+postgresql", tmp) as env, LocalService(tmp, env, concurrency=2) as service:
        yield service


@pytest.fixture(scope="module")
def api_log(svc: LocalService) -> Iterator[LogCapture]:
    with api_logs() as capture:
        yield capture


@pytest.fixture(scope="module")
def keys(svc: LocalService) -> dict[str, str]:
    return {"alice": svc.create_key("alice"), "bob": svc.create_key("bob"),
            "root": svc.create_key("root", admin=True)}


@pytest.fixture(scope="module")
def alice(svc: LocalService, keys: dict[str, str]) -> Iterator[Client]:
    with Client(svc.url, keys["alice"]) as client:
        yield client


@pytest.fixture(scope="module")
def model(alice: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    return upload_small_model(alice, tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def finished_job(alice: Client, model: str) -> str:
    job = alice.submit(model, make_inputs(3, 2))
    assert alice.wait(job.id, timeout=120, progress=False).state == JobState.SUCCEEDED
    return job.id


@pytest.fixture(scope="module")
def comparison(alice: Client, model: str) -> Comparison:
    """A finished comparison of two simulators against the exact reference, on SAMPLES inputs."""
    created = alice.compare(model, make_inputs(SAMPLES, 2, seed=7), ["aer", "braket:local"], shots=2000,
                            mitigation="none", options={"aer": {"seed": 1}})
    done = alice.wait_comparison(created.id, timeout=300)
    assert done.finished and all(b.job.state == JobState.SUCCEEDED for b in [done.reference, *done.backends])
    return done


@pytest.fixture(scope="module")
def console() -> ConsoleErrors:
    return ConsoleErrors()


@pytest.fixture(autouse=True)
def no_console_errors(console: ConsoleErrors) -> Iterator[None]:
    """Every test's pages, checked after it: no console error, no uncaught exception."""
    console.take()
    yield
    assert console.take() == []


@pytest.fixture
def open_as(chromium: Browser, svc: LocalService, console: ConsoleErrors, api_log: LogCapture) -> Iterator[OpenAs]:
    """``open_as(key, width)``: a fresh browser context (its own cookies) signed in with ``key``."""
    contexts = []

    def opened(key: str | None, width: int = WIDE) -> Page:
        context = chromium.new_context(base_url=svc.url, viewport={"width": width, "height": 900})
        contexts.append(context)
        console.watch(context)
        page = context.new_page()
        if key is not None:
            sign_in(page, key)
        return page

    yield opened
    for context in contexts:
        context.close()


def wait_for(client: Client, job_id: str, *states: JobState) -> None:
    """Until the API says the job is in one of ``states`` (a test's precondition, not its assertion)."""
    deadline = time.monotonic() + 60
    while client.status(job_id).state not in states:
        assert time.monotonic() < deadline, f"job {job_id} never reached {states}"
        time.sleep(0.1)


def test_sign_in_and_sign_out_keep_the_key_out_of_urls_storage_and_logs(
        open_as: OpenAs, svc: LocalService, keys: dict[str, str], console: ConsoleErrors,
        api_log: LogCapture) -> None:
    key = keys["alice"]
    page = open_as(None)
    urls: list[str] = []
    page.context.on("request", lambda request: urls.append(request.url))
    page.goto("/dashboard")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in$"))  # no sign-in yet: sent to the form

    console.expect_status(f"{svc.url}/dashboard/sign-in", 401)
    page.locator("#api_key").fill("qk_this_is_not_a_key")
    with page.expect_response(lambda r: r.request.method == "POST") as refused:
        page.get_by_role("button", name="Sign in").click()
    assert refused.value.status == 401
    expect(page.locator("p#sign-in-error")).to_contain_text("api_key")

    page.locator("#api_key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/dashboard$"))
    expect(page.locator("[data-testid=viewer]")).to_have_text("alice")
    expect(page.locator("table[data-testid=queues]")).to_be_visible()

    (cookie,) = [c for c in page.context.cookies() if c["name"] == "qkan_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    script_sees = page.evaluate("() => JSON.stringify([{...localStorage}, {...sessionStorage}, document.cookie])")
    assert key not in script_sees and cookie["value"] not in script_sees
    assert key not in page.content()

    page.get_by_test_id("sign-out").click()
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in$"))
    assert not [c for c in page.context.cookies() if c["name"] == "qkan_session"]
    page.goto("/dashboard")
    expect(page).to_have_url(re.compile(r"/dashboard/sign-in$"))

    stolen = open_as(None)  # the old cookie, replayed by another browser: signed out means dead
    stolen.context.add_cookies([{**cookie, "name": "qkan_session"}])
    stolen.goto("/dashboard/jobs")
    expect(stolen).to_have_url(re.compile(r"/dashboard/sign-in$"))
    assert stolen.request.get("/dashboard/jobs", headers={"X-Dashboard-Live": "1"}).status == 401

    assert urls and not [u for u in urls if key in u]
    assert "POST /dashboard/sign-in" in api_log.text  # the access log was captured: the check below means something
    assert key not in api_log.text
    assert svc.worker_logs and all(key not in log.read_text() for log in svc.worker_logs)


def test_a_job_moves_through_its_states_on_the_page_without_a_reload(
        open_as: OpenAs, keys: dict[str, str], alice: Client, model: str, tmp_path: Path) -> None:
    page = open_as(keys["alice"])
    page.get_by_role("link", name="Jobs").click()
    expect(page.locator("table[data-testid=jobs]")).to_be_visible()
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.evaluate("window.__marker = 1")

    # both worker processes busy for 5 s, so the job is seen queued; then its first round takes 3 s
    blockers = [alice.submit(model, make_inputs(2, 2), backend="test:counting",
                             options={"delay": [5, 0], "log": str(tmp_path / f"blocker{k}.log")}) for k in range(2)]
    for blocker in blockers:
        wait_for(alice, blocker.id, JobState.RUNNING)
    job = alice.submit(model, make_inputs(3, 2), backend="test:counting",
                       options={"delay": [3, 0], "log": str(tmp_path / "job.log")})
    row = page.locator(f'tr[data-job="{job.id}"]')
    expect(row).to_have_attribute("data-state", "queued", timeout=LIVE)
    expect(row).to_have_attribute("data-state", re.compile(r"^(running|waiting_on_provider)$"), timeout=LIVE)
    expect(row).to_have_attribute("data-state", "succeeded", timeout=4 * LIVE)
    expect(row.get_by_test_id("state")).to_have_text("succeeded")
    expect(row.locator("button[data-cancel]")).to_have_count(0)  # nothing left to cancel
    assert page.evaluate("window.__marker") == 1 and navigations == []

    row.get_by_role("link").click()
    expect(page.get_by_test_id("job-state")).to_contain_text("succeeded")
    expect(page.locator("svg[data-testid=timeline]")).to_be_visible()
    for blocker in blockers:
        assert alice.wait(blocker.id, timeout=60, progress=False).state == JobState.SUCCEEDED


def test_cancel_from_the_page_cancels_the_job_and_its_provider_jobs(
        open_as: OpenAs, svc: LocalService, keys: dict[str, str], console: ConsoleErrors, alice: Client,
        model: str, tmp_path: Path) -> None:
    log = tmp_path / "pending.log"
    job = alice.submit(model, make_inputs(3, 2), backend="test:pending",
                       options={"pending_polls": 10_000, "log": str(log)})
    wait_for(alice, job.id, JobState.WAITING_ON_PROVIDER)
    page = open_as(keys["alice"])
    page.goto("/dashboard/jobs?state=waiting_on_provider")
    row = page.locator(f'tr[data-job="{job.id}"]')
    expect(row).to_have_attribute("data-state", "waiting_on_provider")

    cancel_url = f"/dashboard/jobs/{job.id}/cancel"
    for forged in ({}, {"csrf": "not-the-token"}):  # the session cookie alone cannot cancel
        assert page.request.post(cancel_url, form=forged, max_redirects=0).status == 403
    assert alice.status(job.id).state == JobState.WAITING_ON_PROVIDER

    row.locator(f'button[data-cancel="{job.id}"]').click()
    dialog = page.locator("dialog#confirm-cancel")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(job.id[:8])
    with page.expect_navigation():
        dialog.get_by_test_id("confirm-cancel").click()
    expect(page).to_have_url(re.compile(r"/dashboard/jobs\?state=waiting_on_provider$"))  # back where it was

    final = alice.wait(job.id, timeout=60, progress=False)
    assert final.state == JobState.CANCELLED and final.provider_job_ids
    assert Path(f"{log}.cancelled").read_text().split() == final.provider_job_ids
    page.goto("/dashboard/jobs")
    expect(page.locator(f'tr[data-job="{job.id}"]')).to_have_attribute("data-state", "cancelled")


def test_a_key_sees_only_its_own_jobs_and_an_admin_sees_everyones(
        open_as: OpenAs, svc: LocalService, keys: dict[str, str], console: ConsoleErrors, alice: Client,
        finished_job: str, tmp_path: Path) -> None:
    with Client(svc.url, keys["bob"]) as bob:
        theirs = bob.submit(upload_small_model(bob, tmp_path), make_inputs(2, 2)).id
        assert bob.wait(theirs, timeout=120, progress=False).state == JobState.SUCCEEDED

    page = open_as(keys["alice"])
    page.goto("/dashboard/jobs")
    expect(page.locator(f'tr[data-job="{finished_job}"]')).to_be_visible()
    expect(page.locator(f'tr[data-job="{theirs}"]')).to_have_count(0)
    expect(page.locator("table[data-testid=jobs] th", has_text=re.compile(r"^key$"))).to_have_count(0)
    console.expect_status(f"{svc.url}/dashboard/jobs/{theirs}", 404)
    response = page.goto(f"/dashboard/jobs/{theirs}")
    assert response is not None and response.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text("Not found")

    admin = open_as(keys["root"])
    expect(admin.get_by_test_id("viewer")).to_contain_text("admin")
    admin.goto("/dashboard/jobs")
    for job_id, owner in ((finished_job, "alice"), (theirs, "bob")):
        expect(admin.locator(f'tr[data-job="{job_id}"]')).to_contain_text(owner)
    expect(admin.locator("table[data-testid=jobs] th", has_text=re.compile(r"^key$"))).to_have_count(1)
    admin.goto(f"/dashboard/jobs/{theirs}")
    expect(admin.get_by_test_id("job-state")).to_contain_text("succeeded")


def test_a_finished_comparison_draws_one_point_per_output_per_backend(
        open_as: OpenAs, keys: dict[str, str], comparison: Comparison) -> None:
    page = open_as(keys["alice"])
    page.goto(f"/dashboard/comparisons/{comparison.id}")
    backends = [b.backend for b in comparison.backends]
    expect(page.locator("table[data-testid=agreement] tr[data-backend]")).to_have_count(len(backends))
    chart = page.locator("svg[data-testid=comparison-chart]")
    outputs = 1  # the 2-2-1 model
    for backend in backends:
        expect(chart.locator(f'g.point[data-backend="{backend}"]')).to_have_count(SAMPLES * outputs)
    expect(chart.locator("g.point")).to_have_count(len(backends) * SAMPLES * outputs)

    last = chart.locator("g.point").last  # drawn last, so on top: the pointer reaches it, not a neighbour
    tip = last.get_attribute("data-tip") or ""
    x = make_inputs(SAMPLES, 2, seed=7)[-1]
    assert tip.startswith(backends[-1]) and f"at input ({x[0]:.3g}, {x[1]:.3g})" in tip and "reference" in tip
    last.hover()
    expect(page.locator("#tip")).to_be_visible()
    expect(page.locator("#tip")).to_have_text(tip)

    png = page.screenshot(full_page=True)
    assert pixel_spread(png) > 5.0
    if os.environ.get("QKAN_WRITE_SCREENSHOTS") == "1":  # for the README; off in CI, which must not dirty the tree
        (DOCS / "dashboard.png").write_bytes(png)


PAGES = ["/dashboard", "/dashboard/jobs", "/dashboard/jobs/{job}", "/dashboard/backends", "/dashboard/comparisons",
         "/dashboard/comparisons/{comparison}"]


@pytest.mark.parametrize("width", [WIDE, NARROW])
def test_every_page_is_usable_at_laptop_and_phone_width(open_as: OpenAs, keys: dict[str, str], width: int,
                                                         finished_job: str, comparison: Comparison) -> None:
    page = open_as(keys["alice"], width)
    for path in PAGES:
        page.goto(path.format(job=finished_job, comparison=comparison.id))
        expect(page.locator("section#live")).to_be_visible()
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{path} at {width} px is {overflow} px wider than the window"
        links = page.locator("header nav a")
        expect(links).to_have_count(4)
        for link in links.all():
            expect(link).to_be_visible()
            expect(link).to_be_in_viewport()
            link.click(trial=True)  # actionable: visible, stable, not covered by anything
        expect(page.get_by_test_id("sign-out")).to_be_in_viewport()
        page.get_by_test_id("sign-out").click(trial=True)
