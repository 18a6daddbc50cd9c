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
from qkan_orch.service.api.errors import HTTPProblem
from qkan_orch.service.api.job_views import job_out
from qkan_orch.service.api.quotes import RunRequest, quote
from qkan_orch.service.api.schemas import JobOut, JobRequest
from qkan_orch.service.broker import ADVANCE_TASK
from qkan_orch.service.job_logging import job_context
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.arrays import pack_arrays
from qkan_orch.service.store.states import JobState
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
    run = RunRequest(body.model_id, len(inputs) if inputs.ndim else 1, body.backend, body.shots, body.pack,
                     body.options, body.mitigation)
    quoted = quote(session, settings, key, run, inputs=inputs)
    assert quoted.inputs is not None
    job = create_job(
        session, broker, key, kind="inference", model_id=quoted.model_id, backend=body.backend, shots=quoted.shots,
        pack=body.pack, options=body.options, arrays={"inputs": quoted.inputs}, rounds_total=len(quoted.rows),
        idempotency_key=body.idempotency_key, request_hash=request_hash, estimate=quoted.estimate,
        mitigation=quoted.mitigation.to_json(),
    )
    with job_context(job.id):
        e = quoted.estimate
        log.info("queued: %d samples on %s, %d rounds, ≤ %d executions, ≤ USD %.2f", len(quoted.inputs),
                 body.backend, len(quoted.rows), e.executions, e.cost)
    return job_out(session, job), False


def create_job(session: Session, broker: Celery, key: ApiKey, *, kind: str, model_id: str | None, backend: str,
               shots: int | None, pack: Pack, options: dict[str, Any], arrays: dict[str, np.ndarray],
               rounds_total: int, idempotency_key: str | None = None, request_hash: str = "",
               estimate: Estimate | None = None, mitigation: dict[str, Any] | None = None) -> Job:
    """Insert the job, commit, then publish its first step; undo the insert if the broker refuses.

    The queue follows from the backend (``backends.queues``). The message id is
    chosen here and stored with the row, so one commit records both.
    """
    first = next(iter(arrays.values()))
    job = Job(
        id=str(uuid.uuid4()), owner_id=key.id, kind=kind, model_id=model_id, backend=backend,
        queue=queue_for(backend), shots=shots, pack=None if pack == "auto" else pack, pack_auto=pack == "auto",
        options=options, idempotency_key=idempotency_key, request_hash=request_hash, state=JobState.QUEUED,
        rounds_total=rounds_total, samples=int(first.shape[0]), inputs=pack_arrays(arrays), task_id=uuid.uuid4().hex,
        estimate=asdict(estimate) if estimate is not None else None, mitigation=mitigation,
    )
    session.add(job)  # its "queued" event is the row itself: the events stream starts with it
    try:
        session.commit()
    except IntegrityError:  # a concurrent submission with the same idempotency key won the race
        session.rollback()
        raise DuplicateSubmission() from None
    try:
        broker.send_task(ADVANCE_TASK, args=[job.id], queue=job.queue, task_id=job.task_id)
    except Exception as exc:
        session.delete(job)
        session.commit()
        raise HTTPProblem(503, "broker_unavailable", f"the job queue is unreachable ({type(exc).__name__})") from None
    return job
