"""Job rows: creation, leases, round bookkeeping and terminal states.

A worker may only change a running job while it holds the job's lease
(``lease_owner`` = its token, ``lease_until`` in the future). Claims and every
state change are single conditional UPDATEs, so they are atomic on SQLite and
PostgreSQL alike and no transaction stays open while a backend works. The
functions take the caller's session and leave committing to it, so one step
of a worker writes each round in a single transaction.
"""

import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Table, Update, bindparam, case, func, insert, select, update
from sqlalchemy.orm import Session

from qkan_orch.service.store.states import ACTIVE, JobState
from qkan_orch.service.store.states import TERMINAL as TERMINAL  # re-exported for callers holding ``store``
from qkan_orch.service.store.tables import Job, JobEvent, JobResult, Round

JOBS: Table = Job.__table__  # type: ignore[assignment]  # Core statements on the hot path use its columns


class LeaseLost(RuntimeError):
    """Another worker took the job over (our lease expired): stop touching it."""


def add_event(session: Session, job_id: str, kind: str, **data: Any) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, data=data))


_ADD_EVENTS, _ADD_ROUNDS = insert(JobEvent.__table__), insert(Round.__table__)
_STORE_RESULT = insert(JobResult.__table__)


def add_events(session: Session, rows: list[dict[str, Any]]) -> None:
    """Several events (``job_id``, ``kind``, ``data``, ``at``) in one statement."""
    if rows:
        # Core on the session's connection, not the ORM's bulk path: 0.3 ms less CPU a step, and nothing reads
        # these rows back through the session. Not seen by ``do_orm_execute``: PendingWrites writes them again
        # itself when it replays a transaction.
        session.connection().execute(_ADD_EVENTS, rows)


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """What a step reads of the job it claimed, as the claim left it: a plain copy, neither an ORM object nor
    the whole row (the claim returns these columns alone; building a ``Job`` from all of them cost more than
    the claim's statement). A step writes the row only with ``change``."""

    id: str
    owner_id: int
    kind: str
    model_id: str | None
    backend: str
    shots: int | None
    pack: int | None
    pack_auto: bool
    options: dict[str, Any]
    mitigation: dict[str, Any] | None
    inputs: bytes
    plan_state: bytes | None
    in_flight: dict[str, Any] | None
    attempts: int
    cancel_requested: bool

    requested_pack = Job.requested_pack  # the same property: it reads pack_auto and pack


# Core, as in ``change``, and built once, not per call: 0.3-0.4 ms less CPU a step each (A/B, bench/results/
# service_load.md)
_CLAIM = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("claim_id"), JOBS.c.state.in_(ACTIVE), JOBS.c.lease_owner.is_(None))
    .values(
        lease_owner=bindparam("claim_token"), lease_until=bindparam("claim_until"),
        state=case((JOBS.c.state == JobState.QUEUED, JobState.RUNNING), else_=JOBS.c.state),
        started_at=func.coalesce(JOBS.c.started_at, bindparam("claim_now", type_=JOBS.c.started_at.type)),
    )
    .returning(*(JOBS.c[field.name] for field in fields(ClaimedRow)))
)


def claim(session: Session, job_id: str, token: str, lease_seconds: float) -> ClaimedRow | None:
    """Take the job's lease if it is active and nobody holds it; a queued job starts running.

    A lease that ran out is not free: only a sweeper decides that its holder is gone (``take_over`` clears it),
    so a holder that was only cut off from the database keeps its job when it comes back (see
    ``workers.sweeper``) rather than losing it to whichever message arrives first. Returns the job as it is
    now, or None if it could not be claimed (a rollback leaves it as claimed).
    """
    now = time.time()
    row = session.connection().execute(
        _CLAIM, {"claim_id": job_id, "claim_token": token, "claim_until": now + lease_seconds,
                 "claim_now": datetime.now(UTC)}
    ).first()
    return ClaimedRow(*row) if row is not None else None


def expired_leases(session: Session) -> list[tuple[str, str]]:
    """(job id, lease owner) of active jobs whose holder stopped renewing: its worker is gone."""
    rows = session.execute(
        select(Job.id, Job.lease_owner).where(
            Job.state.in_(ACTIVE), Job.lease_owner.is_not(None), Job.lease_until < time.time()
        )
    )
    return [(job_id, owner) for job_id, owner in rows]


def take_over(session: Session, job_id: str, owner: str, task_id: str) -> str | None:
    """Clear ``owner``'s expired lease, name ``task_id`` as the job's next message, log ``worker_lost``.

    One conditional UPDATE on the owner seen expired, so of several sweepers exactly one wins. Returns the
    job's queue, or None if someone else won.
    """
    queue = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(ACTIVE), Job.lease_owner == owner, Job.lease_until < time.time())
        .values(lease_owner=None, lease_until=None, task_id=task_id)
        .returning(Job.queue)
        .execution_options(synchronize_session=False)
    )
    if queue is not None:
        add_event(session, job_id, "worker_lost", message="its worker stopped renewing the lease; the job moves on")
    return queue


def lease_state(session: Session, job_id: str) -> tuple[str | None, float | None]:
    """(state, lease_until) of a job someone else holds, to decide when to come back."""
    row = session.execute(select(Job.state, Job.lease_until).where(Job.id == job_id)).first()
    return (row[0], row[1]) if row else (None, None)


def renew(session: Session, job_id: str, token: str, lease_seconds: float) -> bool:
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == token).values(lease_until=time.time() + lease_seconds)
    )
    return result.rowcount == 1


def change(session: Session, job_id: str, token: str, added: Mapping[str, int | float] | None = None,
           **values: Any) -> bool:
    """Update the job while ``token`` holds its lease: set ``values``, add ``added`` to counter columns (to what
    the row holds, whoever wrote it last). Returns its cancel flag; LeaseLost if the lease is gone.

    Core on the session's connection, columns of ``JOBS`` (an ORM attribute would make it ORM-enabled again):
    the ORM's path costs 0.5 ms more CPU a write (bench/results/service_load.md) to keep the session's copy
    of the job in step, which nothing reads after the claim. Not seen by ``do_orm_execute``, as
    ``PendingWrites`` wants: it issues this statement again itself on each try.
    """
    added = added or {}
    row = session.connection().execute(change_statement(frozenset(values), frozenset(added)),
                                       change_parameters(job_id, token, added, values)).first()
    if row is None:
        raise LeaseLost(job_id)
    return bool(row[0])


@functools.cache
def change_statement(setting: frozenset[str], adding: frozenset[str]) -> Update:
    """``change``'s UPDATE for these columns, built once per set of names with bind parameters for the values: a
    step's writes take a handful of shapes, and a statement reused skips construction and its cache key (0.2 ms
    less CPU a write, bench/results/service_load.md)."""
    columns = {name: bindparam(f"set_{name}", type_=JOBS.c[name].type) for name in setting}
    columns.update({name: JOBS.c[name] + bindparam(f"add_{name}", type_=JOBS.c[name].type) for name in adding})
    return (update(JOBS).where(JOBS.c.id == bindparam("change_id"), JOBS.c.lease_owner == bindparam("change_token"))
            .values(columns).returning(JOBS.c.cancel_requested))


def change_parameters(job_id: str, token: str, added: Mapping[str, int | float], values: Mapping[str, Any]
                      ) -> dict[str, Any]:
    """The bind parameters of ``change_statement``: the job, the lease's token, each value set, each amount added."""
    return {"change_id": job_id, "change_token": token, **{f"set_{k}": v for k, v in values.items()},
            **{f"add_{k}": v for k, v in added.items()}}


RELEASED = {"lease_owner": None, "lease_until": None}  # the columns of a job nobody holds


def add_round(session: Session, job_id: str, number: int, **values: Any) -> None:
    session.add(Round(job_id=job_id, number=number, **values))


def add_rounds(session: Session, rows: list[dict[str, Any]]) -> None:
    """Several finished rounds (with ``job_id`` and ``number``) in one statement."""
    if rows:
        session.connection().execute(_ADD_ROUNDS, rows)  # Core, as in ``add_events``


def complete_round(session: Session, job_id: str, number: int, **values: Any) -> None:
    """Fill in a round that was logged when it went to a provider."""
    result = session.execute(update(Round).where(Round.job_id == job_id, Round.number == number).values(**values))
    if result.rowcount == 0:
        add_round(session, job_id, number, **values)


def store_result(session: Session, job_id: str, arrays: bytes, summary: dict[str, Any]) -> None:
    """The job's result row, with Core as in ``add_events`` (0.3 ms less CPU than the ORM's flush); issued
    by ``PendingWrites`` with the step's last write, and again on each try of it."""
    session.connection().execute(_STORE_RESULT, {"job_id": job_id, "arrays": arrays, "summary": summary})


def cancel_if_idle(session: Session, job_id: str) -> bool:
    """Cancel a job no worker holds and no provider runs for; False if a worker must do it.

    A lease that ran out still counts as held (see ``claim``): its holder may be alive and about to write, and
    its write — conditional on the lease alone — would otherwise put the cancelled job back to running.

    Only the database decides: the session's copy of the job is left alone, because evaluating the condition on
    a copy read before a worker claimed the job would mark it cancelled in memory, and the caller's flag for
    the worker would then never be written.
    """
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(ACTIVE), Job.in_flight.is_(None), Job.lease_owner.is_(None))
        .values(state=JobState.CANCELLED, cancel_requested=True, finished_at=datetime.now(UTC))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def request_cancel(session: Session, job_id: str) -> bool:
    """Flag an active job for its worker (the next write of its step returns the flag); False if it has ended."""
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.state.in_(ACTIVE)).values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def finished_since(session: Session, seconds: float) -> int:
    since = datetime.now(UTC) - timedelta(seconds=seconds)
    return session.scalar(select(func.count()).select_from(Job).where(Job.finished_at >= since)) or 0


def counts_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.state, func.count()).group_by(Job.state))
    return {state: count for state, count in rows}


def abandoned_jobs(session: Session, idle_seconds: float, limit: int = 1000) -> list[str]:
    """Active jobs nobody holds and nobody wrote for ``idle_seconds``: their message may be lost (the broker
    says whether it is). Oldest first."""
    rows = session.scalars(
        select(Job.id).where(Job.state.in_(ACTIVE), Job.lease_owner.is_(None), Job.updated_at < _ago(idle_seconds))
        .order_by(Job.updated_at).limit(limit)
    )
    return list(rows)


def requeue(session: Session, job_id: str, idle_seconds: float, task_id: str) -> str | None:
    """Name ``task_id`` as the next message of a job still abandoned (``abandoned_jobs``) and log
    ``message_lost``; the write itself makes the job look fresh for ``idle_seconds``.

    One conditional UPDATE, so of several sweepers exactly one wins, and a worker that claimed or wrote the job
    meanwhile makes it lose. Returns the job's queue, or None if someone else won.
    """
    queue = session.scalar(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(ACTIVE), Job.lease_owner.is_(None),
               Job.updated_at < _ago(idle_seconds))
        .values(task_id=task_id, updated_at=datetime.now(UTC))
        .returning(Job.queue)
        .execution_options(synchronize_session=False)
    )
    if queue is not None:
        add_event(session, job_id, "message_lost", message="the broker had no message for the job; sent a new one")
    return queue


def _ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)
