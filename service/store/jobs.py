"""Job rows: creation, leases, round bookkeeping and terminal states.

A worker may only change a running job while it holds the job's lease
(``lease_owner`` = its token, ``lease_until`` in the future). Claims and every
state change are single conditional UPDATEs, so they are atomic on SQLite and
PostgreSQL alike and no transaction stays open while a backend works.
"""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from service.store.tables import Job, JobEvent, JobResult, Round

ACTIVE = ("queued", "running", "waiting_on_provider")
TERMINAL = ("succeeded", "failed", "cancelled")


class LeaseLost(RuntimeError):
    """Another worker took the job over (our lease expired): stop touching it."""


def add_event(session: Session, job_id: str, kind: str, **data: Any) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, data=data))


def claim(session: Session, job_id: str, token: str, lease_seconds: float) -> bool:
    """Take the job's lease if it is active and nobody holds a live lease on it."""
    now = time.time()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.state.in_(ACTIVE),
            or_(Job.lease_owner.is_(None), Job.lease_until < now),
        )
        .values(lease_owner=token, lease_until=now + lease_seconds)
    )
    return result.rowcount == 1


def renew(session: Session, job_id: str, token: str, lease_seconds: float) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == token)
        .values(lease_until=time.time() + lease_seconds)
    )
    return result.rowcount == 1


def release(session: Session, job_id: str, token: str) -> None:
    session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == token).values(lease_owner=None, lease_until=None)
    )


def change(session: Session, job_id: str, token: str, **values: Any) -> None:
    """Update the job only while ``token`` holds its lease; else raise LeaseLost."""
    result = session.execute(update(Job).where(Job.id == job_id, Job.lease_owner == token).values(**values))
    if result.rowcount != 1:
        raise LeaseLost(job_id)


def remember_task(session: Session, job_id: str, task_id: str) -> None:
    """The latest message id of a job, so cancelling can revoke it."""
    session.execute(update(Job).where(Job.id == job_id).values(task_id=task_id))


def cancel_if_idle(session: Session, job_id: str) -> bool:
    """Cancel a job no worker holds and no provider runs for; False if a worker must do it."""
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id, Job.state.in_(ACTIVE), Job.in_flight.is_(None),
            or_(Job.lease_owner.is_(None), Job.lease_until < time.time()),
        )
        .values(state="cancelled", cancel_requested=True, finished_at=datetime.now(UTC))
    )
    return result.rowcount == 1


def record_round(session: Session, job_id: str, number: int, **values: Any) -> None:
    """Create or complete the log row of one round (unique per job and number)."""
    row = session.scalar(select(Round).where(Round.job_id == job_id, Round.number == number))
    if row is None:
        session.add(Round(job_id=job_id, number=number, **values))
    else:
        for key, value in values.items():
            setattr(row, key, value)


def store_result(session: Session, job_id: str, arrays: bytes, summary: dict[str, Any]) -> None:
    session.merge(JobResult(job_id=job_id, arrays=arrays, summary=summary))


def finished_since(session: Session, seconds: float) -> int:
    since = datetime.now(UTC) - timedelta(seconds=seconds)
    return session.scalar(select(func.count()).select_from(Job).where(Job.finished_at >= since)) or 0


def counts_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state))
    return {state: count for state, count in rows}


def stale_jobs(session: Session, idle_seconds: float) -> list[tuple[str, str]]:
    """Active jobs nobody holds and nobody touched for a while: their message may be lost."""
    since = datetime.now(UTC) - timedelta(seconds=idle_seconds)
    rows = session.execute(
        select(Job.id, Job.queue).where(
            Job.state.in_(ACTIVE), Job.updated_at < since,
            or_(Job.lease_owner.is_(None), Job.lease_until < time.time()),
        )
    )
    return [(job_id, queue) for job_id, queue in rows]
