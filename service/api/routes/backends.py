"""/v1/backends: what can run — capabilities, price, online state, calibration age, pending jobs."""

import time
from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select

from qkan_orch.backends import Capabilities, Status, get_backend, list_backends
from qkan_orch.service.api.deps import KeyDep, SessionDep
from qkan_orch.service.api.errors import ERROR_RESPONSES
from qkan_orch.service.api.schemas import BackendOut
from qkan_orch.service.store.tables import Job
from qkan_orch.workers.routing import queue_for

router = APIRouter(prefix="/v1/backends", tags=["backends"], responses=ERROR_RESPONSES)
STATUS_SECONDS = 60.0  # a provider's status is asked at most this often
_capabilities: list[Capabilities] = []
_status: dict[str, tuple[float, Status]] = {}


@router.get("", response_model=list[BackendOut], summary="Backends: capabilities, price, status, pending jobs")
async def backends(_: KeyDep, session: SessionDep) -> list[BackendOut]:
    if not _capabilities:  # listing imports every SDK once (seconds); capabilities do not change at run time
        _capabilities.extend(await run_in_threadpool(list_backends))
    statuses = await run_in_threadpool(lambda: [_fresh_status(c.name) for c in _capabilities])
    pending = dict(session.execute(
        select(Job.backend, func.count()).where(Job.state == "waiting_on_provider").group_by(Job.backend)
    ).all())
    return [_out(caps, status, pending.get(caps.name, 0)) for caps, status in zip(_capabilities, statuses, strict=True)]


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
    price = caps.price
    return BackendOut(
        name=caps.name, kind=caps.kind, qubits=caps.qubits, noise=caps.noise, max_shots=caps.max_shots,
        default_pack=caps.default_pack, max_pack=caps.max_pack, options=list(caps.options),
        online=status.online, queue=queue_for(caps.name), status_message=status.message, pending_jobs=pending,
        provider_queue=status.queue_length, calibration_time=status.calibration_time, calibration_age_hours=age,
        price={"per_task": price.per_task, "per_shot": price.per_shot, "per_second": price.per_second,
               "source": price.source},
    )
