"""What the event streams read: the state and the new events of many jobs, in one short session.

The API's streams share one poller (``service.api.event_hub``), so a tick
costs a couple of statements however many clients watch, and no connection
is held between ticks. A job's state is read before its events: whatever was
committed together with a terminal state (its final event) is then visible
to the second read too, so a stream that sees the end has seen every event.
"""

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import Job, JobEvent

JOBS_PER_STATEMENT = 100  # keeps the OR of (job, cursor) terms far below SQLite's expression depth limit
EVENTS_PER_STATEMENT = 500


@dataclass(frozen=True)
class EventRow:
    id: int
    kind: str
    at: datetime
    data: dict[str, Any]


@dataclass(frozen=True)
class JobProgress:
    """``state`` None: no such job. ``complete``: ``events`` are all there are after the cursor (not cut off)."""

    state: JobState | None
    events: list[EventRow]
    complete: bool


def read_progress(session: Session, cursors: Mapping[str, int]) -> dict[str, JobProgress]:
    """Each job's state and its events with ids above its cursor, oldest first."""
    jobs = list(cursors)
    progress: dict[str, JobProgress] = {}
    for start in range(0, len(jobs), JOBS_PER_STATEMENT):
        chunk = {job_id: cursors[job_id] for job_id in jobs[start:start + JOBS_PER_STATEMENT]}
        progress.update(_read_chunk(session, chunk))
    return progress


def _read_chunk(session: Session, cursors: dict[str, int]) -> dict[str, JobProgress]:
    states = {job_id: state for job_id, state in session.execute(select(Job.id, Job.state).where(Job.id.in_(cursors)))}
    after = or_(*(and_(JobEvent.job_id == job_id, JobEvent.id > last) for job_id, last in cursors.items()))
    rows = session.execute(
        select(JobEvent.id, JobEvent.job_id, JobEvent.kind, JobEvent.at, JobEvent.data)
        .where(after).order_by(JobEvent.id).limit(EVENTS_PER_STATEMENT)
    ).all()
    events: dict[str, list[EventRow]] = defaultdict(list)
    for row in rows:
        events[row.job_id].append(EventRow(row.id, row.kind, row.at, row.data))
    complete = len(rows) < EVENTS_PER_STATEMENT
    return {job_id: JobProgress(JobState(states[job_id]) if job_id in states else None, events[job_id], complete)
            for job_id in cursors}
