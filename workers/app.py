"""The workers' Celery app: the shared one from ``service.broker``, configured to consume.

``acks_late`` + ``task_reject_on_worker_lost`` mean a task whose worker dies
is delivered again; every task is idempotent against the job state in the
database, so a second delivery does no harm.
"""

from celery import Celery

from qkan_orch.backends.calibration_snapshot import install_resolver
from qkan_orch.service.broker import celery_app as shared_app
from qkan_orch.service.settings import Settings, get_settings
from qkan_orch.service.store.calibrations import resolver


def celery_app(settings: Settings | None = None) -> Celery:
    """The app for ``settings`` (default: the environment's) with the tasks and the consumer's options; the
    process reads calibration snapshots (``emulate:calibration:<id>``) from the service's database."""
    settings = settings or get_settings()
    install_resolver(resolver(settings.resolved_database_url))
    app = shared_app(settings)
    app.conf.update(
        include=["qkan_orch.workers.tasks"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
    )
    return app
