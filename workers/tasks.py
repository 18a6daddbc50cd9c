"""Celery tasks: thin wrappers that run one step and schedule the next.

The next message is published before this one is acknowledged (acks_late),
so a worker dying anywhere in between leaves at least one message for the
job; extra messages are harmless because a step only does what the job's
state in the database says is left to do.
"""

import logging

from celery import Task
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init, worker_ready
from sqlalchemy.exc import OperationalError

from qkan_orch.backends.accounts import redact_logs
from qkan_orch.service import job_logging
from qkan_orch.service.broker import ADVANCE_TASK, jobs_with_messages
from qkan_orch.service.settings import get_settings
from qkan_orch.service.store.database import engine_for, upgrade
from qkan_orch.workers.app import celery_app
from qkan_orch.workers.step import advance_job
from qkan_orch.workers.sweeper import Sweeper, broker_lock

app = celery_app()
log = logging.getLogger("qkan.worker")
# a broker restarted by ``serve`` is back within seconds: the next step waits for it rather than being lost
PUBLISH_RETRY = {"max_retries": 60, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 1.0}


@app.task(name=ADVANCE_TASK, bind=True, max_retries=None)
def advance(self: Task, job_id: str) -> None:
    """One step, then its successor message; while the database is unreachable, the same message again after a
    backoff doubling from QKAN_RETRY_BACKOFF_SECONDS up to a lease (acks_late acknowledges a task that raised:
    without this the job would wait for the sweeper)."""
    settings = get_settings()
    try:
        step = advance_job(job_id, settings)
    except OperationalError as exc:
        delay = min(settings.lease_seconds, settings.retry_backoff_seconds * 2 ** self.request.retries)
        log.warning("job %s: the database is unreachable (%s); trying again in %g s", job_id,
                    type(exc.orig).__name__, delay)
        raise self.retry(countdown=delay, retry_policy=PUBLISH_RETRY) from None
    if step.again_in is not None:  # the job row already names this message (task_id), for revoking
        queue = self.request.delivery_info.get("routing_key") or "local"
        advance.apply_async((job_id,), queue=queue, countdown=step.again_in or None, task_id=step.task_id,
                            retry_policy=PUBLISH_RETRY)


@after_setup_logger.connect
def _configure_logs(logger: logging.Logger, **_: object) -> None:
    """Third-party loggers at WARNING, ours at QKAN_LOG_LEVEL with the job id (see ``job_logging``)."""
    job_logging.configure(logger, get_settings().log_level)
    redact_logs(logger)


@after_setup_task_logger.connect
def _redact(logger: logging.Logger, **_: object) -> None:
    """No provider secret reaches the worker's log, whatever an SDK puts in an error."""
    redact_logs(logger)


@worker_ready.connect
def _recover(**_: object) -> None:
    """At start-up, bring the schema up to date and start the sweeper, whose first sweep re-enqueues the jobs
    whose worker or message was lost while no worker ran."""
    settings = get_settings()
    url = settings.resolved_database_url
    upgrade(url)
    Sweeper(url, settings.lease_seconds, _publish_step, lambda: jobs_with_messages(app), settings.retention_days,
            broker_lock(settings.redis_url or "")).start()


def _publish_step(job_id: str, queue: str, task_id: str) -> None:
    """The sweeper's publish, on a connection of its own (it runs beside the consumer's event loop)."""
    with app.connection_for_write() as connection:
        advance.apply_async((job_id,), queue=queue, task_id=task_id, connection=connection, retry=False)


@worker_process_init.connect
def _own_database_connections(**_: object) -> None:
    """A pool child forked after the main process used the database must not share its connections."""
    engine_for(get_settings().resolved_database_url).dispose(close=False)
