"""Issue 15's security checks that need no network: bandit over the package, the security headers, no inline script.

* bandit runs over every folder of ``[tool.setuptools.package-dir]``; each finding must be one that
  SECURITY.md accepts (a row ``| Bxxx | `path` | `the flagged line` | why |``), and each accepted row must still
  be found, so the file stays the list of what bandit says. Rows name the flagged line's text, not its number,
  so edits elsewhere in a file do not move them.
* Headers over HTTP from an in-process app (``create_app``, SQLite, no broker): every response, a 413 too, is
  not to be sniffed or framed; the dashboard's pages carry a content security policy whose scripts are this
  service's files only (no ``'unsafe-inline'``, no ``'unsafe-eval'``) and that no page may frame them.
* The templates and static files hold no inline ``<script>`` body, ``on…=`` handler or ``javascript:`` URL,
  which that policy would block anyway (a page that relied on one would break, not run it).

pip-audit needs the vulnerability service (network), so it is not here: SECURITY.md says how to run it.
"""

import json
import re
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from qkan_orch.service.api.app import create_app
from qkan_orch.service.broker import celery_app
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.database import upgrade

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "service" / "dashboard"
ROW = re.compile(r"^\|\s*(B\d{3})\s*\|\s*`([^`]+)`\s*\|\s*`([^`]+)`\s*\|", re.MULTILINE)

Finding = tuple[str, str, str]  # test id, path from the repository root, the flagged line's text (stripped)


def package_folders() -> list[str]:
    """The folders the wheel is built from (pyproject's package-dir), as bandit's targets."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return sorted(pyproject["tool"]["setuptools"]["package-dir"].values())


def bandit_findings() -> list[Finding]:
    """bandit's findings over the package, every severity and confidence."""
    run = subprocess.run([sys.executable, "-m", "bandit", "-q", "-r", *package_folders(), "-f", "json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.stdout, f"bandit printed no report: {run.stderr}"
    report = json.loads(run.stdout)
    assert not report["errors"], f"bandit could not scan: {report['errors']}"
    findings = []
    for result in report["results"]:
        lines = (ROOT / result["filename"]).read_text().splitlines()
        findings.append((result["test_id"], result["filename"], lines[result["line_number"] - 1].strip()))
    return findings


def accepted_findings() -> list[Finding]:
    return [(test, path, line.strip()) for test, path, line in ROW.findall((ROOT / "SECURITY.md").read_text())]


def test_bandit_finds_nothing_that_security_md_does_not_accept() -> None:
    found, accepted = Counter(bandit_findings()), Counter(accepted_findings())
    assert accepted, "SECURITY.md lists no accepted finding: the table's format changed?"
    new = sorted((found - accepted).elements())
    stale = sorted((accepted - found).elements())
    assert not new, "bandit findings not accepted in SECURITY.md (fix them, or add a row saying why):\n" + "\n".join(
        f"| {t} | `{p}` | `{line}` | … |" for t, p, line in new)
    assert not stale, "SECURITY.md accepts findings bandit no longer reports (remove the rows):\n" + "\n".join(
        f"{t} {p}: {line}" for t, p, line in stale)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The API in-process on SQLite; nothing here reaches the broker, so the Celery app is never connected."""
    url = f"sqlite:///{tmp_path_factory.mktemp('security') / 'qkan.db'}"
    upgrade(url)
    settings = Settings(database_url=url, redis_url="redis://unused", max_payload_bytes=1000)
    with TestClient(create_app(settings, celery=celery_app(settings)), base_url="http://localhost") as client:
        yield client


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for directive in filter(None, (part.strip() for part in policy.split(";"))):
        name, *values = directive.split()
        parsed[name] = values
    return parsed


def test_dashboard_pages_have_a_policy_without_inline_scripts_and_no_framing(api: TestClient) -> None:
    for path in ("/dashboard/sign-in", "/dashboard"):  # the form; a page signed out (its redirect)
        response = api.get(path, follow_redirects=False)
        assert response.status_code in (200, 303), (path, response.status_code)
        policy = directives(response.headers["content-security-policy"])
        assert policy["script-src"] == ["'self'"], policy
        assert policy["frame-ancestors"] == ["'none'"], policy
        assert policy["default-src"] == ["'self'"] and policy["base-uri"] == ["'none'"], policy
        assert not any("unsafe" in value for values in policy.values() for value in values), policy
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"  # no-referrer would send forms Origin: null
        assert response.headers["cache-control"] == "no-store"


def test_every_response_is_not_sniffed_framed_or_referred(api: TestClient) -> None:
    responses = {
        "health": api.get("/healthz"),
        "unauthenticated": api.get("/v1/models"),
        "too large": api.post("/v1/models", content=b"x" * 2000),  # refused by BodyLimit, inside the middleware
        "static": api.get("/dashboard/static/dashboard.js"),
    }
    assert responses["unauthenticated"].status_code == 401
    assert responses["too large"].status_code == 413
    for name, response in responses.items():
        assert response.headers.get("x-content-type-options") == "nosniff", name
        assert response.headers.get("x-frame-options") == "DENY", name
        assert response.headers.get("referrer-policy") in ("no-referrer", "same-origin"), name
        assert response.headers.get_list("x-frame-options") == ["DENY"], f"{name}: a header sent twice"
    assert responses["health"].headers["referrer-policy"] == "no-referrer"
    assert "content-security-policy" not in responses["static"].headers  # a script file is no document


SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL)
HANDLER = re.compile(r"<[^>]*\son[a-z]+\s*=", re.IGNORECASE)


def test_no_template_or_static_file_has_inline_script() -> None:
    files = sorted((DASHBOARD / "templates").glob("*.html")) + sorted((DASHBOARD / "static").glob("*.html"))
    assert files, "no templates found"
    scripts = 0
    for file in files:
        text = file.read_text()
        for attributes, body in SCRIPT.findall(text):
            scripts += 1
            assert "src=" in attributes and not body.strip(), f"{file.name}: an inline <script>"
        assert not HANDLER.search(text), f"{file.name}: an inline on…= event handler"
        assert "javascript:" not in text.lower(), f"{file.name}: a javascript: URL"
        assert text.lower().count("<script") == len(SCRIPT.findall(text)), f"{file.name}: an unclosed <script>"
    assert scripts, "the dashboard's script tag was not found: is the check still looking at the right files?"
