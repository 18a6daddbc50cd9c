"""Request dependencies: settings, a database session, the caller's API key, the broker, the event hub."""

import time
from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from qkan_orch.service.api.errors import HTTPProblem
from qkan_orch.service.api.event_hub import EventHub
from qkan_orch.service.api.rate_limits import check_auth_failures, record_auth_failure
from qkan_orch.service.broker import Courier
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.keys import hash_key, key_for_token
from qkan_orch.service.store.tables import ApiKey

_bearer = HTTPBearer(auto_error=False, description="An API key from `qkan-orch keys create`")


# Dependencies that only read app.state are ``async def``: FastAPI runs a plain ``def`` dependency on a worker
# thread, and each such hop costs the event loop more than the read itself (see bench/results/service_load.md).
async def settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def session_dep(settings: Annotated[Settings, Depends(settings_dep)]) -> Iterator[Session]:
    """One session per request; committed when the route returns without raising."""
    with session_scope(settings.resolved_database_url) as session:
        yield session


# Verified keys by their token's SHA-256 (never the token itself): trusted for settings.key_cache_seconds without
# a database lookup. A revoke or rotate through this process drops the key's entries at once (``forget_key``);
# other API processes refuse a revoked or rotated-away token once their entry expires: within key_cache_seconds.
_known_keys: dict[str, tuple[ApiKey, float]] = {}
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def forget_key(key_id: int) -> None:
    """Drop the key's cached entries, whatever token they were for (a rotated key's old one included)."""
    for digest, (key, _) in list(_known_keys.items()):
        if key.id == key_id:
            _known_keys.pop(digest, None)


def _refused(settings: Settings, address: str, message: str) -> HTTPProblem:
    record_auth_failure(settings, address)
    return HTTPProblem(401, "unauthorized", message, headers=_CHALLENGE)


async def current_key(
    request: Request,
    settings: Annotated[Settings, Depends(settings_dep)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The caller's key; then a request from its rate limit (``rate_limits``). On the event loop: a key this
    process verified within ``key_cache_seconds`` needs no database, and the rate limit asks Redis
    asynchronously, so the usual request makes no thread hop for its key. Any other token is looked up on a
    thread (``_verify``)."""
    if credentials is None:
        raise HTTPProblem(401, "unauthorized", "send an API key: 'Authorization: Bearer <key>'", headers=_CHALLENGE)
    digest = hash_key(credentials.credentials)
    cached = _known_keys.get(digest)
    if cached is not None and cached[1] > time.monotonic():
        key = cached[0]
    else:
        address = request.client.host if request.client else "unknown"
        key = await run_in_threadpool(_verify, settings, address, credentials.credentials, digest)
    await request.app.state.request_rates.take(key)
    return key


def _verify(settings: Settings, address: str, token: str, digest: str) -> ApiKey:
    """Look the token up in a short session of its own (a route that holds no session, an event stream, holds
    no connection either) — only if its address has not failed too often: a guess never gets into the cache,
    so only lookups need that check. A valid key is cached for ``key_cache_seconds``."""
    check_auth_failures(settings, address)
    with session_scope(settings.resolved_database_url) as session:
        key = key_for_token(session, token)
        if key is not None:
            session.expunge(key)
    if key is None:
        raise _refused(settings, address, "the API key is not valid")
    if key.revoked_at is not None:
        raise _refused(settings, address, "the API key was revoked")
    _known_keys[digest] = (key, time.monotonic() + settings.key_cache_seconds)
    return key


async def broker_dep(request: Request) -> Celery:
    """The Celery app the API was created with (``create_app(…, celery=…)``)."""
    return request.app.state.celery


async def courier_dep(request: Request) -> Courier:
    """What the API owes the broker after the database has decided (revokes, wake-ups), sent in the background."""
    return request.app.state.courier


async def event_hub_dep(request: Request) -> EventHub:
    """The one poller of this API process's event streams (``create_app`` makes it)."""
    return request.app.state.event_hub


SettingsDep = Annotated[Settings, Depends(settings_dep)]
# scope="function": the session commits before the response is sent, so a client that reads what it just
# wrote (upload a model, then submit with it) finds it; the default would commit after the response.
SessionDep = Annotated[Session, Depends(session_dep, scope="function")]
KeyDep = Annotated[ApiKey, Depends(current_key)]
BrokerDep = Annotated[Celery, Depends(broker_dep)]
CourierDep = Annotated[Courier, Depends(courier_dep)]
EventHubDep = Annotated[EventHub, Depends(event_hub_dep)]
# A page's offset: bounded so every database takes it as an integer (SQLite's are 64-bit, PostgreSQL's here 32)
OffsetQuery = Annotated[int, Query(ge=0, le=2**31 - 1)]
