"""The queue-monitoring dashboard at ``/dashboard``, served by the API process.

Rendered on the server with Jinja2 templates, as FastAPI's own full-stack
examples do, plus one small script (``static/dashboard.js``) that refreshes a
page's live region every 1.5 s and draws tooltips: no front-end build, no
npm, no CDN — the pages work with no network and the templates are the only
place a page is described. A content security policy allows scripts, styles
and fetches from this service only, and inline scripts not at all
(``tests/test_security_checks.py`` keeps the templates free of them).
"""

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qkan_orch.service.api.background_reading import BackgroundReading
from qkan_orch.service.api.routes.backends import backend_rows
from qkan_orch.service.api.schemas import BackendOut
from qkan_orch.service.api.worker_census import inspect_workers
from qkan_orch.service.dashboard.pages import router
from qkan_orch.service.dashboard.signin import SignInRequired, sign_in_redirect
from qkan_orch.service.store.database import session_scope

STATIC = __path__[0] + "/static"
POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
          "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


WORKERS_MAX_AGE = 3.0  # seconds: the Overview's workers are at most this old plus one census (about 1 s)
BACKENDS_MAX_AGE = 15.0  # the listing itself caches providers' statuses for a minute


def install(app: FastAPI) -> None:
    """The pages, their static files, the sign-in redirect, the security headers, and the two slow readings
    the pages show (workers; backends) refreshed in the background."""
    url = app.state.settings.resolved_database_url
    app.state.workers_reading = BackgroundReading(lambda: inspect_workers(app.state.celery), WORKERS_MAX_AGE)
    app.state.backends_reading = BackgroundReading(lambda: _backends(url), BACKENDS_MAX_AGE)
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")
    app.add_exception_handler(SignInRequired, sign_in_redirect)  # type: ignore[arg-type]


class SecurityHeaders:
    """Pure ASGI middleware (a ``BaseHTTPMiddleware`` would wrap every request's body stream in a task group,
    and the body limit's refusal would no longer reach ``BodyLimit``), registered outermost by ``create_app`` so
    every response gets it, a 413 or an error too: no sniffing and no framing anywhere, no referrer outside the
    dashboard; the dashboard's pages also get the content security policy and no caching.

    The dashboard sends its referrer to itself (``same-origin``) rather than ``no-referrer``: under
    ``no-referrer`` a browser sends ``Origin: null`` with a form's POST, and the sign-in's same-origin check
    (``signin.py``) would refuse every form."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        extra = _headers(path)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in extra if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


COMMON = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY")]


def _headers(path: str) -> list[tuple[bytes, bytes]]:
    """The security headers of a response to ``path``."""
    if not path.startswith("/dashboard"):
        return [*COMMON, (b"referrer-policy", b"no-referrer")]
    extra = [*COMMON, (b"referrer-policy", b"same-origin")]
    if not path.startswith("/dashboard/static"):
        extra += [(b"content-security-policy", POLICY.encode()), (b"cache-control", b"no-store")]
    return extra


def _backends(url: str) -> list[BackendOut]:
    with session_scope(url) as session:
        return backend_rows(session)
