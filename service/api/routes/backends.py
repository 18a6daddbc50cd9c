"""/v1/backends: what can run — capabilities, price, online state, calibration age, pending jobs."""

import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from functools import cache
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from qkan_orch.backends import Capabilities, Status, get_backend, list_backends
from qkan_orch.backends.names import check_filters, name_matches
from qkan_orch.backends.queues import queue_for
from qkan_orch.backends.registry import unconfigured_hardware
from qkan_orch.service.api.deps import KeyDep, SessionDep
from qkan_orch.service.api.errors import ERROR_RESPONSES
from qkan_orch.service.api.schemas import BackendOut
from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import Job

router = APIRouter(prefix="/v1/backends", tags=["backends"], responses=ERROR_RESPONSES)
STATUS_SECONDS = 60.0  # a provider's status is asked at most this often
_status: dict[str, tuple[float, Status]] = {}
_listing = threading.Lock()


@router.get("", response_model=list[BackendOut], summary="Backends: capabilities, price, status, pending jobs")
async def backends(
    _: KeyDep,
    session: SessionDep,
    kind: Annotated[str | None, Query(description="analytic | simulator | noisy simulator | qpu")] = None,
    provider: Annotated[str | None, Query(description="exact | aer | emulate | ibm | braket | pennylane")] = None,
    filter: Annotated[str | None, Query(max_length=200, description="Names containing this text")] = None,
) -> list[BackendOut]:
    check_filters(kind, provider)
    return await run_in_threadpool(backend_rows, session, kind, provider, filter)


def backend_rows(session: Session, kind: str | None = None, provider: str | None = None,
                 filter: str | None = None) -> list[BackendOut]:
    """The listing the route and the dashboard show: providers' statuses (cached ``STATUS_SECONDS``), this
    service's jobs waiting on each, and unconfigured hardware with the setting that enables it."""
    capabilities = [c for c in all_capabilities() if name_matches(c.name, provider, filter) and kind in (None, c.kind)]
    statuses = [_fresh_status(c.name) for c in capabilities]
    pending = dict(session.execute(
        select(Job.backend, func.count()).where(Job.state == JobState.WAITING_ON_PROVIDER).group_by(Job.backend)
    ).all())
    rows = [_out(caps, status, pending.get(caps.name, 0)) for caps, status in zip(capabilities, statuses, strict=True)]
    for hardware in unconfigured_hardware():
        caps = hardware.capabilities
        if name_matches(caps.name, provider, filter) and kind in (None, caps.kind):
            status = Status(online=False, message=f"not configured: set {hardware.setting}")
            rows.append(_out(caps, status, 0).model_copy(update={"configured": False,
                                                                 "enable_with": hardware.setting}))
    return rows


def all_capabilities() -> tuple[Capabilities, ...]:
    """Every backend's capabilities, listed once per process: listing imports every SDK (seconds), and
    capabilities do not change at run time. Concurrent first requests wait for the one listing."""
    with _listing:
        return _listed()


@cache
def _listed() -> tuple[Capabilities, ...]:
    return tuple(list_backends())


def _fresh_status(name: str) -> Status:
    now = time.monotonic()
    if name not in _status or now - _status[name][0] > STATUS_SECONDS:
        try:
            status = get_backend(name).status()
        except Exception as exc:  # an unreachable provider is offline, with the reason
            status = Status(online=False, message=f"status unavailable: {type(exc).__name__}")
        _status[name] = (now, status)
    return _status[name][1]


def _out(caps: Capabilities, status: Status, pending: int) -> BackendOut:
    age = None
    if status.calibration_time:
        calibrated = datetime.fromisoformat(status.calibration_time)
        age = round((datetime.now(UTC) - calibrated).total_seconds() / 3600, 2)
    return BackendOut(
        name=caps.name, kind=caps.kind, qubits=caps.qubits, noise=caps.noise, max_shots=caps.max_shots,
        default_pack=caps.default_pack, max_pack=caps.max_pack, options=list(caps.options),
        online=status.online, queue=queue_for(caps.name), status_message=status.message, pending_jobs=pending,
        provider_queue=status.queue_length, calibration_time=status.calibration_time, calibration_age_hours=age,
        price=asdict(caps.price),
    )
