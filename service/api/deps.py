"""Request dependencies: settings, a database session, the caller's API key, the broker, the event hub."""

import time
from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from qkan_orch.service.api.errors import HTTPProblem
from qkan_orch.service.api.event_hub import EventHub
from qkan_orch.service.broker import Courier
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.keys import find_key
from qkan_orch.service.store.tables import ApiKey

_bearer = HTTPBearer(auto_error=False, description="An API key from `qkan-orch keys create`")


def settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def session_dep(settings: Annotated[Settings, Depends(settings_dep)]) -> Iterator[Session]:
    """One session per request; committed when the route returns without raising."""
    with session_scope(settings.resolved_database_url) as session:
        yield session


_KEY_TTL = 30.0  # seconds a verified key is trusted without a database lookup
_known_keys: dict[str, tuple[ApiKey, float]] = {}


def current_key(
    settings: Annotated[Settings, Depends(settings_dep)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ApiKey:
    """The caller's key, looked up in a short session of its own: a route that holds no session (an event
    stream) holds no connection either."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise HTTPProblem(401, "unauthorized", "send an API key: 'Authorization: Bearer <key>'", headers=challenge)
    token = credentials.credentials
    cached = _known_keys.get(token)
    if cached is not None and cached[1] > time.monotonic():
        return cached[0]
    with session_scope(settings.resolved_database_url) as session:
        key = find_key(session, token)
        if key is not None:
            session.expunge(key)
    if key is None:
        raise HTTPProblem(401, "unauthorized", "the API key is not valid", headers=challenge)
    _known_keys[token] = (key, time.monotonic() + _KEY_TTL)
    return key


def broker_dep(request: Request) -> Celery:
    """The Celery app the API was created with (``create_app(…, celery=…)``)."""
    return request.app.state.celery


def courier_dep(request: Request) -> Courier:
    """What the API owes the broker after the database has decided (revokes, wake-ups), sent in the background."""
    return request.app.state.courier


def event_hub_dep(request: Request) -> EventHub:
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
