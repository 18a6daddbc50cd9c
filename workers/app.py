"""The Celery application, configured from the service settings.

Redis is only the broker: results live in the database, so Celery's result
backend is off. ``acks_late`` + ``task_reject_on_worker_lost`` mean a task
whose worker dies is delivered again; every task is idempotent against the
job state in the database, so a second delivery does no harm.
"""

from celery import Celery
from kombu import Queue

from qkan_orch.service.settings import Settings, get_settings
from qkan_orch.workers.routing import QUEUES

_apps: dict[str, Celery] = {}


def celery_app(settings: Settings | None = None) -> Celery:
    """The Celery app for ``settings`` (default: the environment's), one per broker URL."""
    settings = settings or get_settings()
    if not settings.redis_url:
        raise RuntimeError("QKAN_REDIS_URL is not set (qkan-orch serve starts an embedded Redis and sets it)")
    if settings.redis_url in _apps:
        return _apps[settings.redis_url]
    app = _apps[settings.redis_url] = Celery("qkan", broker=settings.redis_url, include=["qkan_orch.workers.tasks"])
    app.conf.update(
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="local",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            # look for a dead worker's messages every tenth of the timeout (kombu's default: 100 s)
            "unacked_restore_interval": max(1, settings.broker_visibility_timeout // 10),
            "unacked_restore_throttle": 1,
        },
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app

