"""The sweeper: a dead worker's job moves on when its lease expires, not when the broker redelivers its message.

A worker killed mid-step leaves its job leased to nobody alive and its message
unacknowledged; Redis hands that message back only after the visibility
timeout (300 s by default). Every worker therefore sweeps, from a thread of
its main process, at start-up and every half lease: a job whose lease ran out
is taken over with one conditional UPDATE (see ``store.take_over``) and a
step is published for it, so with the default 30 s lease it resumes within
about a minute of its worker's death.

The same thread prunes (``store.retention``) when QKAN_RETENTION_DAYS is set: at most once an hour over all
workers, coordinated by a lock on the broker (Redis ``SET NX EX 3600``) that is never released, only expires,
so whichever worker's sweep first finds it free prunes and the others skip until the hour is over.
"""

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

import redis

from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.retention import PruneReport, prune

log = logging.getLogger("qkan.worker")

# publish(job_id, queue, task_id): send the job's next step with that message id
Publish = Callable[[str, str, str], None]
# acquire(name, seconds): True for one caller only until ``seconds`` have passed (a lock that expires)
Acquire = Callable[[str, int], bool]
PRUNE_LOCK, PRUNE_EVERY = "qkan:retention:prune", 3600


def sweep(url: str, publish: Publish) -> list[str]:
    """Take over every job whose lease expired and publish a step for it; returns the ids taken over.

    The step is published before the take-over commits: if the broker is away, the take-over rolls back and the
    next sweep tries again, and a take-over that fails to commit after publishing leaves a harmless duplicate.
    """
    taken = []
    with session_scope(url) as session:
        for job_id, owner in store.expired_leases(session):
            task_id = uuid.uuid4().hex
            queue = store.take_over(session, job_id, owner, task_id)
            if queue is None:
                continue
            try:
                publish(job_id, queue, task_id)
            except Exception:
                session.rollback()
                log.warning("job %s: worker lost, but the broker did not take its next step; retrying", job_id)
                continue
            session.commit()
            log.warning("job %s: its worker stopped renewing the lease; re-enqueued", job_id)
            taken.append(job_id)
    return taken


def broker_lock(redis_url: str) -> Acquire:
    """Locks on the broker all workers share: ``SET name NX EX seconds``, holding who took it."""

    def acquire(name: str, seconds: int) -> bool:
        with redis.Redis.from_url(redis_url) as client:
            return bool(client.set(name, f"{socket.gethostname()}:{os.getpid()}", nx=True, ex=seconds))

    return acquire


def prune_if_due(url: str, retention_days: int, acquire: Acquire) -> PruneReport | None:
    """Delete jobs finished more than ``retention_days`` ago if retention is on and no worker pruned within the
    hour; None when it did not run. A prune that fails waits for the next hour: it deletes nothing it must keep."""
    if retention_days <= 0 or not acquire(PRUNE_LOCK, PRUNE_EVERY):
        return None
    with session_scope(url) as session:
        report = prune(session, timedelta(days=retention_days))
    log.info("retention (%d days): deleted %s", retention_days, report)
    return report


class Sweeper(threading.Thread):
    """Sweeps at once and then every ``interval`` seconds until ``stopped`` is set, pruning when due (with
    ``retention_days`` > 0); a failed sweep or prune is logged."""

    def __init__(self, url: str, interval: float, publish: Publish, retention_days: int = 0,
                 acquire: Acquire | None = None) -> None:
        super().__init__(name="qkan-sweeper", daemon=True)
        self.url, self.interval, self.publish = url, interval, publish
        self.retention_days, self.acquire = retention_days, acquire
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                sweep(self.url, self.publish)
            except Exception:  # the database is away for a moment: the next sweep tries again
                log.exception("sweeping expired leases failed")
            if self.acquire is not None:
                try:
                    prune_if_due(self.url, self.retention_days, self.acquire)
                except Exception:
                    log.exception("pruning finished jobs failed")
            if self.stopped.wait(self.interval):
                return
