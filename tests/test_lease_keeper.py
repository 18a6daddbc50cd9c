"""The lease keeper: one thread per process renews every lease held there, and stops renewing one that is
released or taken over (its effect on whole jobs: test_worker_faults.py, test_broker_and_database_restarts.py)."""

import threading
import time
import uuid
from pathlib import Path

from sqlalchemy import insert, select, update

from qkan_orch.service.store.database import session_scope, upgrade
from qkan_orch.service.store.keys import create_key
from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import Job
from qkan_orch.workers import lease

SECONDS = 3.0  # the lease: renewed every second


def leased_jobs(url: str, count: int) -> list[tuple[str, str]]:
    """Running jobs (id, token) whose lease runs for SECONDS from now."""
    with session_scope(url) as session:
        key, _ = create_key(session, "keeper")
        held = [(str(uuid.uuid4()), uuid.uuid4().hex) for _ in range(count)]
        session.execute(insert(Job), [
            {"id": job_id, "owner_id": key.id, "kind": "inference", "backend": "exact", "queue": "local",
             "request_hash": "", "state": JobState.RUNNING, "inputs": b"", "options": {}, "lease_owner": token,
             "lease_until": time.time() + SECONDS} for job_id, token in held])
    return held


def lease_until(url: str, job_id: str) -> float:
    with session_scope(url) as session:
        return session.scalar(select(Job.lease_until).where(Job.id == job_id))


def keepers() -> int:
    return [thread.name for thread in threading.enumerate()].count("lease-keeper")


def test_leases_held_at_once_never_lapse_and_stop_being_renewed_once_released_or_taken(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'qkan.db'}"
    upgrade(url)
    before = keepers()
    (first, first_token), (second, second_token), (taken, taken_token) = leased_jobs(url, 3)
    with lease.kept(url, first, first_token, SECONDS), lease.kept(url, taken, taken_token, SECONDS):
        with session_scope(url) as session:  # a sweeper's take-over: the keeper must not renew it any more
            session.execute(update(Job).where(Job.id == taken).values(lease_owner="someone-else"))
        with lease.kept(url, second, second_token, SECONDS):
            for _ in range(4):  # two leases in turn, 4.4 s: each renewed, never past its end
                time.sleep(1.1)
                assert lease_until(url, first) > time.time() and lease_until(url, second) > time.time()
        released = lease_until(url, second)
        time.sleep(1.5)
    assert lease_until(url, second) == released  # out of its block: not renewed again
    assert lease_until(url, taken) < time.time()  # taken over: left to run out
    assert keepers() == before + 1  # one thread for all three
