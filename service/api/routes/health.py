"""/healthz, /readyz and /metrics: the routes that need no API key."""

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qkan_orch.service.api.deps import BrokerDep, SettingsDep
from qkan_orch.service.broker import ping as ping_broker
from qkan_orch.service.metrics import registry_for
from qkan_orch.service.store.database import ping as ping_database

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Database and broker are reachable",
            responses={503: {"description": "A dependency is unreachable"}})
async def readyz(settings: SettingsDep, broker: BrokerDep, response: Response) -> dict[str, str]:
    checks = {"database": "ok", "broker": "ok"}
    try:
        await run_in_threadpool(ping_database, settings.resolved_database_url)
    except Exception as exc:
        checks["database"] = type(exc).__name__
    try:
        await run_in_threadpool(ping_broker, broker)
    except Exception as exc:
        checks["broker"] = type(exc).__name__
    if any(v != "ok" for v in checks.values()):
        response.status_code = 503
    return checks


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def metrics(settings: SettingsDep, broker: BrokerDep) -> Response:
    data = await run_in_threadpool(generate_latest, registry_for(settings, broker))
    return Response(data, media_type=CONTENT_TYPE_LATEST)
