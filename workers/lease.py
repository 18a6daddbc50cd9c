"""A worker's lease on a job: claimed with one conditional UPDATE, renewed while a step works.

Only the lease holder may change a running job (see ``service.store.jobs``);
a worker that finds the lease taken comes back when it expires, and every
half second after that until a sweeper has decided the holder is gone
(``store.take_over``) or the holder has renewed it.
"""

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.states import TERMINAL

log = logging.getLogger("qkan.worker")
RENEW_RETRY = 0.5  # seconds between tries of a renewal that failed
# the claim is one statement, committed by itself: no BEGIN and COMMIT round trips around it
ONE_STATEMENT = {"isolation_level": "AUTOCOMMIT"}


@dataclass(frozen=True)
class Lease:
    """The claimed job as the claim left it, and the token every later write must present."""

    job: store.ClaimedRow
    token: str


def claim(session: Session, job_id: str, seconds: float) -> Lease | None:
    """Take the job's lease (committed) if it is active and free; None if someone else holds it or it ended."""
    token = uuid.uuid4().hex
    session.connection(execution_options=ONE_STATEMENT)
    job = store.claim(session, job_id, token, seconds)
    session.commit()
    return Lease(job, token) if job is not None else None


def retry_after(session: Session, job_id: str) -> float | None:
    """Seconds until another holder's lease runs out (and a bit), None if the job has ended."""
    state, lease_until = store.lease_state(session, job_id)
    if state is None or state in TERMINAL:
        return None
    return max(0.5, (lease_until or 0) - time.time() + 0.5)


@contextmanager
def kept(url: str, job_id: str, token: str, seconds: float) -> Iterator[None]:
    """Renew the lease in the background for as long as the block runs (a long round, a training slice)."""
    keeper = _Keeper(url, job_id, token, seconds)
    keeper.start()
    try:
        yield
    finally:
        keeper.stopped.set()


class _Keeper(threading.Thread):
    """Renews every third of a lease; after a renewal that failed (the database is away), every half second
    until one succeeds, so the lease is renewed as soon as the database is back — before the sweepers, which
    give a holder a whole lease then (``sweeper``), would take the job over. Ends when the lease is gone."""

    def __init__(self, url: str, job_id: str, token: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.url, self.job_id, self.token, self.seconds = url, job_id, token, seconds
        self.stopped = threading.Event()

    def run(self) -> None:
        wait = self.seconds / 3
        while not self.stopped.wait(wait):
            try:
                with session_scope(self.url) as session:
                    if not store.renew(session, self.job_id, self.token, self.seconds):
                        return
                wait = self.seconds / 3
            except OperationalError as exc:
                log.warning("job %s: renewing the lease failed (%s); trying again", self.job_id,
                            type(exc.orig).__name__)
                wait = min(self.seconds / 3, RENEW_RETRY)
