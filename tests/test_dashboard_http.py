"""The dashboard's sign-in, scoping and forms over plain HTTP (the browser tests drive the same pages live).

Real service (uvicorn, system Redis, SQLite) with no worker, so a submitted job stays queued until cancelled.
Checked: signed out, a page redirects to the form and a live refresh gets 401; a bad key is 401 naming
``api_key`` and sets no cookie; the session cookie is httpOnly, SameSite=Strict and is not the key; every page
names no outside URL, everything it links is served here, and a content security policy says so; a cancel
without the sign-in's CSRF token, or from another origin, changes nothing; a key sees only its own jobs and an
admin key (``keys create --admin``) every key's; signing out ends the session for a copied cookie too.
"""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import make_model
from qkan_orch.client import Client, JobState
from qkan_orch.models import save_model
from qkan_orch.service.local import LocalService
from service_env import stack_env
from support.cli_process import cli
from support.html_links import links

PAGES = ("/dashboard", "/dashboard/jobs", "/dashboard/backends", "/dashboard/comparisons")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    tmp = tmp_path_factory.mktemp("dashboard")
    with stack_env("system-redis+sqlite", tmp) as env, LocalService(tmp, env).running(workers=0) as service:
        yield service


@contextmanager
def signed_in(svc: LocalService, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=svc.url, timeout=30) as web:
        answer = web.post("/dashboard/sign-in", data={"api_key": token})
        assert answer.status_code == 303 and answer.headers["location"] == "/dashboard", answer.text
        yield web


def queued_job(svc: LocalService, token: str, folder: Path) -> str:
    """A job that stays queued: nothing consumes the queue here."""
    save_model(make_model(width=[2, 1], reps=1), str(folder / "m.safetensors"))
    with Client(svc.url, token) as qc:
        return qc.submit(qc.upload_model(folder / "m.safetensors").id, np.zeros((2, 2)), backend="exact").id


def csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "no CSRF field on the page"
    return found.group(1)


def test_signed_out_pages_redirect_and_live_refreshes_get_401(svc: LocalService) -> None:
    for path in PAGES:
        answer = httpx.get(svc.url + path)
        assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/sign-in"
        assert httpx.get(svc.url + path, headers={"X-Dashboard-Live": "1"}).status_code == 401


@pytest.mark.parametrize("key", ["", "qk_not-a-key", "x" * 150])
def test_a_bad_key_is_401_naming_the_field_and_sets_no_cookie(svc: LocalService, key: str) -> None:
    answer = httpx.post(svc.url + "/dashboard/sign-in", data={"api_key": key})
    assert answer.status_code == 401 and "api_key:" in answer.text
    assert "set-cookie" not in answer.headers


def test_the_session_cookie_is_httponly_strict_and_not_the_key(svc: LocalService) -> None:
    token = svc.create_key("cookie")
    answer = httpx.post(svc.url + "/dashboard/sign-in", data={"api_key": token})
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie, cookie
    assert token not in cookie and token[3:] not in cookie
    with signed_in(svc, token) as web:
        assert all(token not in web.get(path).text for path in PAGES)


def test_pages_load_nothing_from_outside(svc: LocalService) -> None:
    with signed_in(svc, svc.create_key("offline")) as web:
        for path in ("/dashboard/sign-in", *PAGES):
            page = web.get(path)
            assert page.status_code == 200, (path, page.text)
            assert "default-src 'self'" in page.headers["content-security-policy"]
            assert "http://" not in page.text and "https://" not in page.text, path
            for url in links(page.text):
                assert (url.startswith("/") and not url.startswith("//")) or url.startswith(("data:", "?")), url
                if url.startswith("/dashboard/static/"):
                    assert web.get(url).status_code == 200, url


def test_cancel_needs_the_sign_ins_csrf_token_and_this_origin(svc: LocalService, tmp_path: Path) -> None:
    token = svc.create_key("canceller")
    job = queued_job(svc, token, tmp_path)
    with signed_in(svc, token) as web, Client(svc.url, token) as qc:
        good = csrf(web.get(f"/dashboard/jobs/{job}").text)
        path = f"/dashboard/jobs/{job}/cancel"
        assert web.post(path, data={"csrf": "forged"}).status_code == 403
        assert web.post(path, data={}).status_code == 403
        assert web.post(path, data={"csrf": good}, headers={"Origin": "http://evil.example"}).status_code == 403
        assert qc.status(job).state == JobState.QUEUED
        done = web.post(path, data={"csrf": good, "back": "/dashboard/jobs"})
        assert done.status_code == 303 and done.headers["location"] == "/dashboard/jobs"
        assert qc.status(job).state == JobState.CANCELLED


def test_a_key_sees_its_own_jobs_and_an_admin_key_sees_every_keys(svc: LocalService, tmp_path: Path) -> None:
    alice, bob = svc.create_key("alice"), svc.create_key("bob")
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    alices, bobs = queued_job(svc, alice, tmp_path / "a"), queued_job(svc, bob, tmp_path / "b")
    made = cli("keys", "create", "--admin", "--name", "ops", env={k: v for k, v in svc.env.items()
                                                                     if k.startswith("QKAN_")}, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    listed = cli("keys", "list", env={k: v for k, v in svc.env.items() if k.startswith("QKAN_")}, cwd=tmp_path)
    assert re.search(r"\tops\tadmin\t", listed.stdout) and re.search(r"\talice\tuser\t", listed.stdout)
    with signed_in(svc, alice) as web:
        jobs = web.get("/dashboard/jobs").text
        assert alices in jobs and bobs not in jobs
        other = web.get(f"/dashboard/jobs/{bobs}")
        assert other.status_code == 404 and bobs not in other.text.replace(f"<code>{bobs}</code>", "")
        assert web.post(f"/dashboard/jobs/{bobs}/cancel", data={"csrf": csrf(jobs)}).status_code == 404
    with signed_in(svc, made.stdout.strip()) as web:
        jobs = web.get("/dashboard/jobs").text
        assert alices in jobs and bobs in jobs and ">admin<" in jobs
        assert web.get(f"/dashboard/jobs/{bobs}").status_code == 200


def test_signing_out_ends_the_session_for_a_copied_cookie_too(svc: LocalService) -> None:
    with signed_in(svc, svc.create_key("leaving")) as web:
        copied = httpx.Client(base_url=svc.url, cookies={"qkan_session": web.cookies["qkan_session"]})
        assert copied.get("/dashboard").status_code == 200
        page = web.get("/dashboard").text
        out = web.post("/dashboard/sign-out", data={"csrf": csrf(page)})
        assert out.status_code == 303 and out.headers["location"] == "/dashboard/sign-in"
        assert copied.get("/dashboard").status_code == 303
        copied.close()
