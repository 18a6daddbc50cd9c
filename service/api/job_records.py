"""Creating jobs: an inference request checked, estimated and budgeted; any job inserted, then published.

The routes parse HTTP (JSON or multipart) and call these. Replay and queue
are decided here; limits, shots, rounds, estimate and budget by the quote
(``quotes``) a dry run gets too, from the parsed model spec.
"""

import hashlib
import json
import logging
import uuid
from dataclasses import asdict
from typing import Any

import numpy as np
from celery import Celery
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from qkan_orch.backends.base import Estimate, Pack
from qkan_orch.backends.queues import queue_for
from qkan_orch.service.api.errors import BROKER_RETRY_AFTER, HTTPProblem
from qkan_orch.service.api.job_views import job_out
from qkan_orch.service.api.quotes import RunSettings, quote, workload
from qkan_orch.service.api.rate_limits import check_active_jobs
from qkan_orch.service.api.schemas import JobOut, JobRequest
from qkan_orch.service.broker import ADVANCE_TASK, Courier, PublishStep, Revoke
from qkan_orch.service.job_logging import job_context
from qkan_orch.service.settings import Settings
from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.arrays import pack_arrays
from qkan_orch.service.store.states import TERMINAL, JobState
from qkan_orch.service.store.tables import ApiKey, Job

log = logging.getLogger("qkan.api")


class DuplicateSubmission(HTTPProblem):
    """A concurrent submission with the same idempotency key committed first: submitting again replays its job."""

    def __init__(self) -> None:
        super().__init__(409, "idempotency_conflict", "a job with this idempotency_key is being created",
                         "idempotency_key")


def submit_inference(session: Session, broker: Celery, settings: Settings, key: ApiKey, body: JobRequest,
                     inputs: np.ndarray) -> tuple[JobOut, bool]:
    """The new job, or the earlier one this idempotency key made (True: a replay)."""
    request_hash = ""
    if body.idempotency_key:  # a replay must be the same request: remember a digest of it
        request_hash = hashlib.sha256(
            json.dumps(body.model_dump(exclude={"inputs"}), sort_keys=True).encode() + inputs.tobytes()
        ).hexdigest()
        existing = session.scalar(
            select(Job).where(Job.owner_id == key.id, Job.idempotency_key == body.idempotency_key)
        )
        if existing is not None:
            if existing.request_hash != request_hash:
                raise HTTPProblem(409, "idempotency_conflict", "this idempotency_key was used for a different request",
                                  "idempotency_key")
            return job_out(session, existing), True
    work = workload(session, settings, key, body.model_id, len(inputs) if inputs.ndim else 1, inputs)
    assert work.inputs is not None
    quoted = quote(session, settings, key, work, RunSettings(body.backend, body.shots, body.pack, body.options,
                                                             body.mitigation))
    check_active_jobs(session, settings, key, 1)
    job = create_job(
        session, broker, key, kind="inference", model_id=work.model_id, backend=body.backend, shots=quoted.shots,
        pack=body.pack, options=body.options, arrays={"inputs": work.inputs}, rounds_total=len(work.rows),
        idempotency_key=body.idempotency_key, request_hash=request_hash, estimate=quoted.estimate,
        mitigation=quoted.mitigation.to_json(),
    )
    with job_context(job.id):
        e = quoted.estimate
        log.info("queued: %d samples on %s, %d rounds, ≤ %d executions, ≤ USD %.2f", len(work.inputs),
                 body.backend, len(work.rows), e.executions, e.cost)
    return job_out(session, job), False


def create_job(session: Session, broker: Celery, key: ApiKey, **fields: Any) -> Job:
    """Insert the job (``new_job``'s fields), commit, then publish its first step (``publish``)."""
    job = new_job(key, **fields)
    session.add(job)  # its "queued" event is the row itself: the events stream starts with it
    publish(session, broker, [job])
    return job


def new_job(key: ApiKey, *, kind: str, model_id: str | None, backend: str, shots: int | None, pack: Pack,
            options: dict[str, Any], arrays: dict[str, np.ndarray], rounds_total: int,
            idempotency_key: str | None = None, request_hash: str = "", estimate: Estimate | None = None,
            mitigation: dict[str, Any] | None = None, comparison_id: str | None = None) -> Job:
    """A queued job's row. The queue follows from the backend (``backends.queues``); the message id is chosen
    here and stored with the row, so one commit records both."""
    first = next(iter(arrays.values()))
    return Job(
        id=str(uuid.uuid4()), owner_id=key.id, kind=kind, model_id=model_id, backend=backend,
        queue=queue_for(backend), shots=shots, pack=None if pack == "auto" else pack, pack_auto=pack == "auto",
        options=options, idempotency_key=idempotency_key, request_hash=request_hash, state=JobState.QUEUED,
        rounds_total=rounds_total, samples=int(first.shape[0]), inputs=pack_arrays(arrays), task_id=uuid.uuid4().hex,
        estimate=asdict(estimate) if estimate is not None else None, mitigation=mitigation,
        comparison_id=comparison_id,
    )


def publish(session: Session, broker: Celery, jobs: list[Job], *, also_undo: list[Any] = ()) -> None:
    """Commit what the session holds, then publish each job's first step; if the broker refuses, delete the
    jobs (and ``also_undo``, e.g. their comparison) again: nothing half-made stays."""
    try:
        session.commit()
    except IntegrityError:  # a concurrent submission with the same idempotency key won the race
        session.rollback()
        raise DuplicateSubmission() from None
    try:
        for job in jobs:
            broker.send_task(ADVANCE_TASK, args=[job.id], queue=job.queue, task_id=job.task_id)
    except Exception as exc:
        for row in [*jobs, *also_undo]:
            session.delete(row)
        session.commit()
        raise HTTPProblem(503, "broker_unavailable", f"the job queue is unreachable ({type(exc).__name__})",
                          headers={"Retry-After": BROKER_RETRY_AFTER}) from None


def cancel_job(session: Session, courier: Courier, job: Job) -> Job:
    """Queued jobs end at once; running ones are flagged and stop after their current step, cancelling provider
    jobs. The database decides, broker or not: the job's pending message is revoked, and a flagged job woken,
    through the courier, which keeps trying while the broker is away. 409 if it had already ended."""
    if job.state == JobState.CANCELLED:
        return job
    if job.state in TERMINAL:
        raise HTTPProblem(409, "already_finished", f"the job already {job.state}", "job_id")
    idle = store.cancel_if_idle(session, job.id)
    if idle:
        store.add_event(session, job.id, "state", state=JobState.CANCELLED)
    flagged = idle or store.request_cancel(session, job.id)  # a worker holds it or a provider job is in flight
    session.commit()
    session.refresh(job)
    if not flagged and job.state != JobState.CANCELLED:  # it ended on its own meanwhile
        raise HTTPProblem(409, "already_finished", f"the job already {job.state}", "job_id")
    if job.task_id:
        courier.deliver(Revoke(job.task_id))
    if not idle:  # the next step cancels the provider job and ends the job
        courier.deliver(PublishStep(job.id, job.queue))
    with job_context(job.id):
        log.info("cancelled" if idle else "cancel requested: the next step ends it")
    return job
