"""Jobs as the API shows them: a row and its rounds become a JobOut.

A page of jobs reads the rounds of all its jobs in one query, so listing 500
jobs costs the same few statements as listing one.
"""

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from qkan_orch.service.api.schemas import EstimateOut, JobError, JobOut, RoundOut
from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import Job, Round


def job_out(session: Session, job: Job) -> JobOut:
    return jobs_out(session, [job])[0]


def jobs_out(session: Session, jobs: Sequence[Job]) -> list[JobOut]:
    """The jobs' views, their rounds read in one query (a queued job has none yet)."""
    started = [job.id for job in jobs if job.state != JobState.QUEUED]
    rounds: dict[str, list[Round]] = defaultdict(list)
    if started:
        query = select(Round).where(Round.job_id.in_(started)).order_by(Round.job_id, Round.number)
        for row in session.scalars(query):
            rounds[row.job_id].append(row)
    return [_view(job, rounds[job.id]) for job in jobs]


def _view(job: Job, rounds: list[Round]) -> JobOut:
    provider_ids = [pid for r in rounds for pid in r.provider_job_ids]
    if job.in_flight:
        provider_ids += [p for p in job.in_flight["handle"]["provider_job_ids"] if p not in provider_ids]
    return JobOut(
        id=job.id, kind=job.kind, model_id=job.model_id, backend=job.backend, queue=job.queue,  # type: ignore[arg-type]
        state=JobState(job.state), rounds_done=job.rounds_done, rounds_total=job.rounds_total,
        samples=job.samples, shots=job.shots, pack=job.requested_pack, options=job.options,
        estimate=EstimateOut(**job.estimate) if job.estimate else None, placement=job.placement,
        mitigation=job.mitigation,
        qpu_seconds=job.qpu_seconds, cost=job.cost, shots_used=job.shots_used,
        executions=job.executions, provider_job_ids=provider_ids, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at,
        queued_seconds=_seconds(job.created_at, job.started_at), run_seconds=_seconds(job.started_at, job.finished_at),
        error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        rounds=[RoundOut.model_validate(r) for r in rounds],
    )


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()
