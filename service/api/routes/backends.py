"""/v1/backends: what can run, with capabilities and status."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from backends import list_backends
from service.api.deps import KeyDep
from service.api.errors import ERROR_RESPONSES
from service.api.schemas import BackendOut
from workers.routing import queue_for

router = APIRouter(prefix="/v1/backends", tags=["backends"], responses=ERROR_RESPONSES)
_cache: list[BackendOut] = []


@router.get("", response_model=list[BackendOut], summary="Backends: names, capabilities, status")
async def backends(_: KeyDep) -> list[BackendOut]:
    if not _cache:  # listing imports every SDK once (seconds); capabilities do not change at run time
        _cache.extend(await run_in_threadpool(_collect))
    return _cache


def _collect() -> list[BackendOut]:
    from backends import get_backend

    out = []
    for caps in list_backends():
        status = get_backend(caps.name).status()
        out.append(BackendOut(
            name=caps.name, kind=caps.kind, qubits=caps.qubits, noise=caps.noise, max_shots=caps.max_shots,
            default_pack=caps.default_pack, max_pack=caps.max_pack, options=list(caps.options),
            online=status.online, queue=queue_for(caps.name),
        ))
    return out
