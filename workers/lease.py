"""A worker's lease on a job: claimed with one conditional UPDATE, renewed while a step works.

Only the lease holder may change a running job (see ``service.store.jobs``);
a worker that finds the lease taken comes back when it expires, and every
half second after that until a sweeper has decided the holder is gone
(``store.take_over``) or the holder has renewed it.
"""

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.database import ONE_STATEMENT, session_scope
from qkan_orch.service.store.states import TERMINAL

log = logging.getLogger("qkan.worker")
RENEW_RETRY = 0.5  # seconds between tries of a renewal that failed


@dataclass(frozen=True)
class Lease:
    """The claimed job as the claim left it, and the token every later write must present."""

    job: store.ClaimedRow
    token: str


def claim(session: Session, job_id: str, seconds: float) -> Lease | None:
    """Take the job's lease (committed) if it is active and free; None if someone else holds it or it ended."""
    token = uuid.uuid4().hex
    session.connection(execution_options=ONE_STATEMENT)  # the claim is one statement, committed by itself
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
    """Renew the lease in the background for as long as the block runs (a long round, a training slice), by this
    process's keeper for ``url`` and ``seconds``: one thread, started with the first lease, not one per step
    (starting a thread cost a step 0.1 ms of CPU and 0.3 ms of waiting, bench/results/service_load.md)."""
    keeper = _keeper(url, seconds)
    keeper.hold(job_id, token)
    try:
        yield
    finally:
        keeper.drop(job_id, token)


class _Keeper(threading.Thread):
    """Renews every lease of its process every third of a lease (one that was just claimed a little early: so
    none goes longer than a third of a lease unrenewed); after a round of renewals that failed (the database is
    away), every half second until one succeeds, so the leases are renewed as soon as the database is back —
    before the sweepers, which give a holder a whole lease then (``sweeper``), would take the jobs over. A
    lease found gone (taken over, or the job ended) is dropped."""

    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(daemon=True, name="lease-keeper")
        self.url, self.seconds = url, seconds
        self.held: dict[str, str] = {}  # job id -> token
        self.lock = threading.Lock()

    def hold(self, job_id: str, token: str) -> None:
        with self.lock:
            self.held[job_id] = token

    def drop(self, job_id: str, token: str) -> None:
        with self.lock:
            if self.held.get(job_id) == token:
                del self.held[job_id]

    def run(self) -> None:
        wait = self.seconds / 3
        while True:
            time.sleep(wait)
            with self.lock:
                held = list(self.held.items())
            if not held:  # nothing to renew: back to the usual pace, whatever the last round of renewals met
                wait = self.seconds / 3
                continue
            try:
                with session_scope(self.url) as session:
                    gone = [(job_id, token) for job_id, token in held
                            if not store.renew(session, job_id, token, self.seconds)]
                for job_id, token in gone:
                    self.drop(job_id, token)
                wait = self.seconds / 3
            except OperationalError as exc:
                log.warning("renewing %d lease(s) failed (%s); trying again", len(held), type(exc.orig).__name__)
                wait = min(self.seconds / 3, RENEW_RETRY)


_keepers: dict[tuple[str, float], _Keeper] = {}
_keepers_lock = threading.Lock()


def _keeper(url: str, seconds: float) -> _Keeper:
    with _keepers_lock:
        if (url, seconds) not in _keepers:
            _keepers[url, seconds] = keeper = _Keeper(url, seconds)
            keeper.start()
        return _keepers[url, seconds]


def _forget_keepers() -> None:
    """In a forked child (a Celery pool process): the parent's keeper threads are not running there."""
    global _keepers_lock
    _keepers.clear()
    _keepers_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_keepers)
