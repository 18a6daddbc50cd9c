"""The sweeper: a job moves on when its worker or its message is lost, not when the broker redelivers.

A worker killed mid-step leaves its job leased to nobody alive and its message
unacknowledged; Redis hands that message back only after the visibility
timeout (300 s by default). Every worker therefore sweeps, from a thread of
its main process, at start-up and every half lease: a job whose lease ran out
is taken over with one conditional UPDATE (see ``store.take_over``) and a
step is published for it, so with the default 30 s lease it resumes within
about a minute of its worker's death.

A broker restarted without its data (or a publish that never happened) loses
messages instead: a job nobody holds, that nobody wrote for a whole lease and
that the broker holds no message for (``broker.jobs_with_messages``: queued or
delivered and unacknowledged) gets a new one, again with one conditional
UPDATE (``store.requeue``). So a lost message is replaced at most one and a
half leases (45 s by default) after the broker is back. A duplicate — a
message in transit at the moment of the look — is harmless: a step only does
what the job's row says is left, under the lease.

A worker cut off from the database cannot renew its leases. After a sweep
that could not reach the database, the sweeper takes no lease over for one
lease from the moment it reaches it again: a holder that is alive renews
first (``lease._Keeper`` retries every half second), keeps its job and writes
what it did meanwhile — a provider job it submitted is not submitted again.

The same thread prunes (``store.retention``) when QKAN_RETENTION_DAYS is set: at most once an hour over all
workers, coordinated by a lock on the broker (Redis ``SET NX EX 3600``) that is never released, only expires,
so whichever worker's sweep first finds it free prunes and the others skip until the hour is over.
"""

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import redis
from kombu.exceptions import OperationalError as BrokerUnreachable
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.database import ping, session_scope
from qkan_orch.service.store.retention import PruneReport, prune

log = logging.getLogger("qkan.worker")

# publish(job_id, queue, task_id): send the job's next step with that message id
Publish = Callable[[str, str, str], None]
# messages(): the ids of the jobs the broker holds a step message for (``broker.jobs_with_messages``)
Messages = Callable[[], set[str]]
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
            if queue is not None and _published(session, publish, job_id, queue, task_id,
                                                "its worker stopped renewing the lease"):
                taken.append(job_id)
    return taken


def requeue_lost(url: str, publish: Publish, messages: Messages, idle: float) -> list[str]:
    """Send a step for every job nobody holds, nobody wrote for ``idle`` seconds and the broker holds no message
    for; returns their ids. Published before the UPDATE commits, as in ``sweep``."""
    requeued = []
    with session_scope(url) as session:
        abandoned = store.abandoned_jobs(session, idle)
        held = messages() if abandoned else set()
        for job_id in abandoned:
            if job_id in held:
                continue
            task_id = uuid.uuid4().hex
            queue = store.requeue(session, job_id, idle, task_id)
            if queue is not None and _published(session, publish, job_id, queue, task_id,
                                                "the broker had no message for it"):
                requeued.append(job_id)
    return requeued


def _published(session: Session, publish: Publish, job_id: str, queue: str, task_id: str, why: str) -> bool:
    """Publish the step the session's uncommitted UPDATE names, then commit it; roll it back if the broker refused
    (the next sweep tries again)."""
    try:
        publish(job_id, queue, task_id)
    except Exception:
        session.rollback()
        log.warning("job %s: %s, but the broker did not take its next step; retrying", job_id, why)
        return False
    session.commit()
    log.warning("job %s: %s; re-enqueued", job_id, why)
    return True


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
    """Sweeps at once and then every half lease until ``stopped`` is set, pruning when due (with
    ``retention_days`` > 0); a failed sweep or prune is logged."""

    def __init__(self, url: str, lease_seconds: float, publish: Publish, messages: Messages,
                 retention_days: int = 0, acquire: Acquire | None = None) -> None:
        super().__init__(name="qkan-sweeper", daemon=True)
        self.url, self.lease, self.publish, self.messages = url, lease_seconds, publish, messages
        self.retention_days, self.acquire = retention_days, acquire
        self.stopped = threading.Event()
        self.hold_until = 0.0  # no take-over before this time (inf: the database was unreachable)

    def run(self) -> None:
        while True:
            self.sweep()
            if self.acquire is not None:
                try:
                    prune_if_due(self.url, self.retention_days, self.acquire)
                except Exception:
                    log.exception("pruning finished jobs failed")
            if self.stopped.wait(self.lease / 2):
                return

    def sweep(self) -> None:
        """Expired leases (unless held off after the database was away), then lost messages."""
        try:
            if self.hold_until == math.inf:  # reachable again: the holders get a lease to renew first
                ping(self.url)
                self.hold_until = time.time() + self.lease
            if time.time() >= self.hold_until:
                sweep(self.url, self.publish)
            requeue_lost(self.url, self.publish, self.messages, self.lease)
        except OperationalError as exc:
            self.hold_until = math.inf
            log.warning("sweeping: the database is unreachable (%s); no lease is taken over until a lease after "
                        "it is back", type(exc.orig).__name__)
        except (BrokerUnreachable, redis.ConnectionError) as exc:  # the next sweep tries again
            log.warning("sweeping: the broker is unreachable (%s)", exc)
        except Exception:
            log.exception("sweeping failed")
