"""The sweeper: a dead worker's job moves on when its lease expires, not when the broker redelivers its message.

A worker killed mid-step leaves its job leased to nobody alive and its message
unacknowledged; Redis hands that message back only after the visibility
timeout (300 s by default). Every worker therefore sweeps, from a thread of
its main process, at start-up and every half lease: a job whose lease ran out
is taken over with one conditional UPDATE (see ``store.take_over``) and a
step is published for it, so with the default 30 s lease it resumes within
about a minute of its worker's death.
"""

import logging
import threading
import uuid
from collections.abc import Callable

from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.database import session_scope

log = logging.getLogger("qkan.worker")

# publish(job_id, queue, task_id): send the job's next step with that message id
Publish = Callable[[str, str, str], None]


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


class Sweeper(threading.Thread):
    """Sweeps at once and then every ``interval`` seconds until ``stopped`` is set; a failed sweep is logged."""

    def __init__(self, url: str, interval: float, publish: Publish) -> None:
        super().__init__(name="qkan-sweeper", daemon=True)
        self.url, self.interval, self.publish = url, interval, publish
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                sweep(self.url, self.publish)
            except Exception:  # the database is away for a moment: the next sweep tries again
                log.exception("sweeping expired leases failed")
            if self.stopped.wait(self.interval):
                return
