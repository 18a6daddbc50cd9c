"""What the dashboard's pages show, read from the store in a few aggregate queries per page.

Every query is scoped by ``Viewer``: a key sees its own jobs, an admin key
every key's. Counts are SQL aggregates over indexed columns (state, queue,
finished_at); only the last hour's finish times are read as rows, into a
60-bucket histogram, so the Overview costs the same with 100 or 10 000 jobs.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session, defer

from qkan_orch.service.api.job_views import jobs_out
from qkan_orch.service.api.schemas import JobOut
from qkan_orch.service.store.states import ACTIVE, JobState
from qkan_orch.service.store.tables import ApiKey, Job, JobEvent

PAGE = 50  # jobs per page of the Jobs table


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the key's id, its name, and whether it sees every key's jobs."""

    key_id: int
    name: str
    admin: bool

    def scope(self, query: Select[Any]) -> Select[Any]:
        return query if self.admin else query.where(Job.owner_id == self.key_id)


@dataclass
class QueueRow:
    """One broker queue: messages waiting in Redis, this viewer's jobs in it, the workers serving it."""

    name: str
    depth: int
    queued: int = 0
    running: int = 0
    waiting_on_provider: int = 0
    workers: int | None = None  # None: no census yet
    concurrency: int | None = None
    active: int | None = None


@dataclass
class Overview:
    queues: list[QueueRow]
    by_state: dict[str, int]
    finished_last_minute: int
    finished_last_hour: int
    failure_rate: float | None  # failed / (succeeded + failed) over the last hour; None: nothing ended
    throughput: list[int] = field(default_factory=list)  # jobs finished per minute, oldest of the 60 first
    workers_age: float | None = None


def overview(session: Session, viewer: Viewer, depths: dict[str, int], workers: list[Any] | None,
             workers_age: float | None) -> Overview:
    now = datetime.now(UTC)
    by_queue = session.execute(viewer.scope(
        select(Job.queue, Job.state, func.count()).where(Job.state.in_(ACTIVE)).group_by(Job.queue, Job.state)))
    rows = {name: QueueRow(name, depth) for name, depth in depths.items()}
    for queue, state, count in by_queue:
        row = rows.setdefault(queue, QueueRow(queue, 0))
        setattr(row, JobState(state).value, count)
    if workers is not None:
        for row in rows.values():
            serving = [w for w in workers if row.name in w.queues]
            row.workers = len(serving)
            row.concurrency = sum(w.concurrency or 0 for w in serving)
            row.active = sum(w.active for w in serving)
    by_state = dict(session.execute(viewer.scope(select(Job.state, func.count()).group_by(Job.state))).all())
    hour_ago = now - timedelta(hours=1)
    ended = dict(session.execute(viewer.scope(
        select(Job.state, func.count()).where(Job.finished_at >= hour_ago).group_by(Job.state))).all())
    times = session.scalars(viewer.scope(select(Job.finished_at).where(Job.finished_at >= hour_ago))).all()
    ages = np.array([(now - t).total_seconds() for t in times]) if times else np.empty(0)
    per_minute = np.histogram(ages, bins=60, range=(0.0, 3600.0))[0][::-1]
    finished = ended.get(JobState.SUCCEEDED, 0) + ended.get(JobState.FAILED, 0)
    return Overview(
        queues=list(rows.values()), by_state={s.value: by_state.get(s, 0) for s in JobState},
        finished_last_minute=int(np.count_nonzero(ages < 60.0)), finished_last_hour=len(times),
        failure_rate=ended.get(JobState.FAILED, 0) / finished if finished else None,
        throughput=[int(n) for n in per_minute], workers_age=workers_age,
    )


@dataclass
class JobsPage:
    jobs: list[JobOut]
    owners: dict[str, str]  # job id → its key's name, for an admin's view
    total: int
    offset: int
    backends: list[str]  # every backend this viewer has jobs on, for the filter


def jobs_page(session: Session, viewer: Viewer, state: JobState | None, backend: str | None,
              offset: int) -> JobsPage:
    query = viewer.scope(select(Job).options(defer(Job.inputs), defer(Job.plan_state)))
    if state is not None:
        query = query.where(Job.state == state)
    if backend:
        query = query.where(Job.backend == backend)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(PAGE).offset(offset)).all()
    backends = session.scalars(viewer.scope(select(Job.backend).distinct()).order_by(Job.backend)).all()
    return JobsPage(jobs=jobs_out(session, rows), owners=owners(session, rows), total=total, offset=offset,
                    backends=list(backends))


def owners(session: Session, jobs: Sequence[Job]) -> dict[str, str]:
    """Job id → the name of the key that submitted it (one query for the page)."""
    ids = {job.owner_id for job in jobs}
    names = dict(session.execute(select(ApiKey.id, ApiKey.name).where(ApiKey.id.in_(ids))).all()) if ids else {}
    return {job.id: names.get(job.owner_id, "?") for job in jobs}


def visible_job(session: Session, viewer: Viewer, job_id: str) -> Job | None:
    job = session.get(Job, job_id, options=[defer(Job.inputs), defer(Job.plan_state)])
    return job if job is not None and (viewer.admin or job.owner_id == viewer.key_id) else None


def job_events(session: Session, job_id: str) -> list[JobEvent]:
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))
