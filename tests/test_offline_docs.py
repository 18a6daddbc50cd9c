"""/docs and /redoc work on a machine without internet: every file they load comes from the service itself.

Real service (uvicorn, system Redis, SQLite, no worker). What is checked, per page (/docs, /redoc and Swagger
UI's OAuth2 redirect page): the HTML holds no "http://" or "https://" at all, every src and href in it is a
path on this service ("/...", not "//host"), and each of those answers 200 with the right content type and a
body the size of the real asset. The spec URL each page hands its script answers too.
"""

import re
from collections.abc import Iterator

import httpx
import pytest

from qkan_orch.service.local import LocalService
from service_env import stack_env
from support.html_links import links

PAGES = ("/docs", "/redoc", "/docs/oauth2-redirect")
# (content type, smallest plausible body): the bundles are ~1.5 MB and ~1.1 MB, the stylesheet ~175 kB.
EXPECTED = {".js": ("text/javascript", 500_000), ".css": ("text/css", 50_000), ".png": ("image/png", 1_000)}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    tmp = tmp_path_factory.mktemp("docs")
    with (stack_env("system-redis+sqlite", tmp) as env, LocalService(tmp, env).running(workers=0) as service,
          httpx.Client(base_url=service.url, timeout=30) as client):
        yield client


@pytest.mark.parametrize("page", PAGES)
def test_a_docs_page_names_no_outside_url(http: httpx.Client, page: str) -> None:
    answer = http.get(page)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert not re.findall(r"https?://\S*", answer.text)
    assert all(url.startswith("/") and not url.startswith("//") for url in links(answer.text)), links(answer.text)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_asset_a_docs_page_loads_is_served(http: httpx.Client, page: str) -> None:
    urls = links(http.get(page).text)
    assert {url.rsplit(".", 1)[-1] for url in urls} == ({"css", "png", "js"} if page == "/docs" else {"png", "js"})
    for url in urls:
        content_type, smallest = EXPECTED["." + url.rsplit(".", 1)[-1]]
        answer = http.get(url)
        assert answer.status_code == 200, url
        assert answer.headers["content-type"].startswith(content_type), (url, answer.headers["content-type"])
        assert len(answer.content) >= smallest, (url, len(answer.content))


def test_the_pages_load_the_spec_from_the_service(http: httpx.Client) -> None:
    swagger, redoc = http.get("/docs").text, http.get("/redoc").text
    assert "url: '/openapi.json'" in swagger and '"validatorUrl": null' in swagger  # no badge from a public validator
    assert 'spec-url="/openapi.json"' in redoc
    spec = http.get("/openapi.json").json()
    assert spec["info"]["title"] == "QKAN Orchestrator" and "/docs" not in spec["paths"]
