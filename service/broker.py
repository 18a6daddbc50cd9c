"""The message broker the API and the workers share: the Celery app that publishes, and what Redis says.

Redis is only the broker: results live in the database, so Celery's result
backend is off. This module holds what both sides must agree on (queues,
JSON messages, the visibility timeout); ``workers.app`` adds what only a
consumer needs. The API gets its app passed in (``create_app(…, celery=…)``).
"""

from celery import Celery
from kombu import Queue

from qkan_orch.backends.queues import QUEUES
from qkan_orch.service.settings import Settings

_apps: dict[str, Celery] = {}


def celery_app(settings: Settings) -> Celery:
    """The Celery app for ``settings.redis_url``, one per broker URL in a process."""
    if not settings.redis_url:
        raise RuntimeError("QKAN_REDIS_URL is not set (qkan-orch serve starts an embedded Redis and sets it)")
    if settings.redis_url in _apps:
        return _apps[settings.redis_url]
    app = _apps[settings.redis_url] = Celery("qkan", broker=settings.redis_url)
    app.conf.update(
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="local",
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            # look for a dead worker's messages every tenth of the timeout (kombu's default: 100 s)
            "unacked_restore_interval": max(1, settings.broker_visibility_timeout // 10),
            "unacked_restore_throttle": 1,
        },
        task_send_sent_event=True,
    )
    return app


def queue_depths(broker: Celery) -> dict[str, int]:
    """Messages waiting per queue (kombu keeps priority levels in sibling Redis lists)."""
    with broker.connection_for_read() as connection:
        client = connection.default_channel.client
        depths = {}
        for name in QUEUES:
            keys = [name] + [f"{name}\x06\x16{p}" for p in range(1, 10)]
            depths[name] = sum(client.llen(k) for k in keys)
    return depths


def ping(broker: Celery) -> None:
    """Raise unless the broker answers a PING (one retry of the connection)."""
    with broker.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1)
        connection.default_channel.client.ping()
