"""The FastAPI application factory."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from celery import Celery
from fastapi import FastAPI

from qkan_orch.backends.accounts import redact_logs
from qkan_orch.backends.calibration_snapshot import install_resolver
from qkan_orch.service import dashboard
from qkan_orch.service.api import docs_assets, errors
from qkan_orch.service.api.event_hub import EventHub
from qkan_orch.service.api.limits import BodyLimit
from qkan_orch.service.api.rate_limits import RequestRates
from qkan_orch.service.api.routes import backends, calibrations, comparisons, estimate, health, jobs, models, queues
from qkan_orch.service.api.routes import keys as key_routes
from qkan_orch.service.broker import Courier
from qkan_orch.service.job_logging import configure_api
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.calibrations import resolver

DESCRIPTION = """Run trained QKAN models on quantum simulators and hardware.

Every route except `/healthz`, `/readyz` and `/metrics` needs an API key
(`Authorization: Bearer <key>`, created with `qkan-orch keys create`); a key
sees only its own models and jobs. Errors are `{"error": {"code", "message", "field"}}`.
"""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Once the server has set up logging: ours with the job id (``job_logging``), and no provider secret reaches
    any log, whatever an SDK says. At shutdown the event streams' poller, the rate limits' Redis client and the
    broker courier stop."""
    configure_api(app.state.settings.log_level)
    redact_logs(*map(logging.getLogger, ("", "qkan", "uvicorn", "uvicorn.error", "uvicorn.access")))
    yield
    await app.state.event_hub.close()
    await app.state.request_rates.close()
    app.state.courier.close()


def create_app(settings: Settings, *, celery: Celery) -> FastAPI:
    app = FastAPI(title="QKAN Orchestrator", version="0.1.0", description=DESCRIPTION, lifespan=_lifespan,
                  docs_url=None, redoc_url=None)  # served from local files by docs_assets
    app.state.settings, app.state.celery = settings, celery
    app.state.event_hub = EventHub(settings.resolved_database_url, settings.max_streams_per_key)
    app.state.courier = Courier(celery)
    app.state.request_rates = RequestRates(settings)
    errors.install(app)
    docs_assets.install(app)
    install_resolver(resolver(settings.resolved_database_url))  # emulate:calibration:<id> in quotes
    for router in (models.router, jobs.router, estimate.router, comparisons.router, calibrations.router,
                   backends.router, queues.router, health.router, key_routes.router):
        app.include_router(router)
    dashboard.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_payload_bytes)
    app.add_middleware(dashboard.SecurityHeaders)  # outermost: the body limit's 413 gets the headers too
    return app
