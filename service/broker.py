"""The message broker the API and the workers share: the Celery app that publishes, and what Redis says.

Redis is only the broker: results live in the database, so Celery's result
backend is off. This module holds what both sides must agree on (queues,
JSON messages, the visibility timeout); ``workers.app`` adds what only a
consumer needs. The API gets its app passed in (``create_app(…, celery=…)``)
and sends what a cancel owes the broker through a ``Courier``, so cancel and
status never wait for the broker.
"""

import base64
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu import Queue

from qkan_orch.backends.queues import QUEUES
from qkan_orch.service.settings import Settings

log = logging.getLogger("qkan.api")
ADVANCE_TASK = "qkan.advance"  # the one task: run a job's next step (registered by workers.tasks)
UNACKED = "unacked"  # kombu's Redis hash of delivered, unacknowledged messages (its ``unacked_key``)
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
    )
    return app


def _queue_keys(name: str) -> list[str]:
    """The Redis lists of a queue: kombu keeps priority levels in sibling lists."""
    return [name] + [f"{name}\x06\x16{p}" for p in range(1, 10)]


def queue_depths(broker: Celery) -> dict[str, int]:
    """Messages waiting per queue."""
    with broker.connection_for_read() as connection:
        client = connection.default_channel.client
        return {name: sum(client.llen(k) for k in _queue_keys(name)) for name in QUEUES}


def jobs_with_messages(broker: Celery) -> set[str]:
    """The ids of the jobs the broker holds a step message for: waiting in a queue, or delivered to a worker
    and not yet acknowledged (running, prefetched, or held until its countdown) — kombu keeps those in the
    ``unacked`` hash until the ack, so a message is always in one of the two, except for the instant of a
    delivery between them.

    Reads every message: the sweeper calls it only when some job looks abandoned (``store.abandoned_jobs``).
    """
    with broker.connection_for_read() as connection:
        client = connection.default_channel.client
        waiting = [m for name in QUEUES for key in _queue_keys(name) for m in client.lrange(key, 0, -1)]
        delivered = client.hvals(UNACKED)  # each [message, exchange, routing key]
    messages = [_parsed(m) for m in waiting] + [(_parsed(m) or [None])[0] for m in delivered]
    return {job_id for job_id in map(_job_of, messages) if job_id is not None}


def _parsed(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _job_of(message: Any) -> str | None:
    """The job id a step message is for; None for another task's message or one that cannot be read."""
    try:
        if message["headers"].get("task") != ADVANCE_TASK:
            return None
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return str(json.loads(body)[0][0])  # task protocol 2: [args, kwargs, embed]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def ping(broker: Celery) -> None:
    """Raise unless the broker answers a PING (one retry of the connection)."""
    with broker.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1)
        connection.default_channel.client.ping()


@dataclass(frozen=True)
class Revoke:
    """Drop a message the database has made pointless (the step of a cancelled job)."""

    task_id: str


@dataclass(frozen=True)
class PublishStep:
    """Wake a job now rather than at its next scheduled step (a cancel reaches a provider job sooner)."""

    job_id: str
    queue: str


Errand = Revoke | PublishStep
_RETRY_FIRST, _RETRY_MAX = 0.5, 30.0  # seconds between tries while the broker is away (doubling)


class Courier:
    """Broker calls the API makes after the database has decided, kept off the request's critical path.

    One background thread sends them; ``deliver`` waits at most ``wait`` seconds
    for the first try. While the broker is away errands stay queued and are
    retried with back-off until it answers, so a cancel answers at once and its
    revoke lands when the broker is back. Errands live in this process only: a
    lost one costs a no-op step, since a worker taking a cancelled job's
    message finds nothing left to do.
    """

    def __init__(self, broker: Celery, wait: float = 1.0) -> None:
        self.broker, self.wait = broker, wait
        self._pending: dict[Errand, None] = {}  # insertion-ordered set
        self._changed = threading.Condition()
        self._started = self._ended = 0  # tries begun and finished
        self._thread: threading.Thread | None = None
        self._closed = False

    def deliver(self, errand: Errand) -> bool:
        """Queue ``errand``; True if the broker took it within ``wait`` seconds, False if it is kept for later."""
        with self._changed:
            self._pending[errand] = None
            first_try = self._started + 1  # the first try whose snapshot can include this errand
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="qkan-broker-courier", daemon=True)
                self._thread.start()
            self._changed.notify_all()
            self._changed.wait_for(lambda: errand not in self._pending or self._ended >= first_try, self.wait)
            return errand not in self._pending

    def pending(self) -> int:
        with self._changed:
            return len(self._pending)

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _run(self) -> None:
        delay = _RETRY_FIRST
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                errands = list(self._pending)
                self._started += 1
            try:
                self._send(errands)
                delay = _RETRY_FIRST
                failed = False
            except Exception as exc:  # the broker is away: keep what is left, try again later
                log.warning("broker unreachable (%s: %s); %d message(s) kept, next try in %.1f s",
                            type(exc).__name__, exc, self.pending(), delay)
                failed = True
            with self._changed:
                self._ended += 1
                self._changed.notify_all()
                if failed:  # a new errand wakes this early: its caller is waiting for a try
                    self._changed.wait(delay)
                    delay = min(2 * delay, _RETRY_MAX)

    def _send(self, errands: list[Errand]) -> None:
        with self.broker.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, interval_max=0)
            for errand in errands:
                if isinstance(errand, Revoke):
                    self.broker.control.revoke(errand.task_id, connection=connection)
                else:
                    self.broker.send_task(ADVANCE_TASK, args=[errand.job_id], queue=errand.queue)
                with self._changed:
                    self._pending.pop(errand, None)
                    self._changed.notify_all()
