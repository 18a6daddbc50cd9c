"""Signing in to the dashboard with an API key, and who each request is.

The key is typed into a form once; the browser then holds only a session
token in an httpOnly, SameSite=Strict cookie (``store.web_sessions``), so the
key is never in a URL, in page script or storage, or in an access log.
State-changing forms (cancel, sign-out) also carry the session's CSRF token,
compared in constant time, and a cross-origin ``Origin`` is refused: two
locks where SameSite alone would do in current browsers.
"""

import hmac
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException

from qkan_orch.service.api.deps import SessionDep
from qkan_orch.service.dashboard.queries import Viewer
from qkan_orch.service.store.web_sessions import LIFETIME, find_session

COOKIE = "qkan_session"
LIVE_HEADER = "x-dashboard-live"  # a page's live region asked for by its script: answered 401, not redirected


class SignInRequired(Exception):
    """No live sign-in: pages redirect to the form, live refreshes get 401 (the script then goes there)."""


class SignedIn:
    """The viewer a request's cookie stands for, and its sign-in's CSRF token."""

    def __init__(self, viewer: Viewer, csrf: str) -> None:
        self.viewer, self.csrf = viewer, csrf


def signed_in(request: Request, session: SessionDep) -> SignedIn:
    """Read in the request's own session, the one its page reads with (FastAPI hands both the same)."""
    token = request.cookies.get(COOKIE)
    found = find_session(session, token) if token else None
    if found is None:
        raise SignInRequired
    key, web = found
    return SignedIn(Viewer(key.id, key.name, key.admin), web.csrf)


SignedInDep = Annotated[SignedIn, Depends(signed_in)]


def check_form(request: Request, user: SignedIn, csrf: str) -> None:
    """A state-changing form is ours: same origin (when the browser says) and the sign-in's CSRF token."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.url.netloc:
        raise HTTPException(403, "cross-origin form refused")
    if not hmac.compare_digest(csrf.encode(), user.csrf.encode()):
        raise HTTPException(403, "the form's CSRF token does not match this sign-in; reload the page")


def set_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(COOKIE, token, max_age=int(LIFETIME.total_seconds()), path="/dashboard", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict")


def sign_in_redirect(request: Request, _: SignInRequired) -> Response:
    if request.headers.get(LIVE_HEADER):
        return Response("signed out", status_code=401, media_type="text/plain")
    return RedirectResponse("/dashboard/sign-in", status_code=303)
