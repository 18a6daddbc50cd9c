"""Creating jobs: an inference request checked, estimated and budgeted; any job inserted, then published.

The routes parse HTTP (JSON or multipart) and call these; everything a
submission decides — replay, limits, shots, rounds, estimate, budget, queue —
is decided here, from the parsed model spec rather than its raw JSON.
"""

import hashlib
import json
import uuid
from dataclasses import asdict
from typing import Any

import numpy as np
from celery import Celery
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from qkan_orch.backends import get_backend
from qkan_orch.backends.base import Estimate, Pack
from qkan_orch.backends.queues import queue_for
from qkan_orch.circuits import validate_inputs
from qkan_orch.mitigation import Mitigation, mitigated
from qkan_orch.models import parse_spec
from qkan_orch.models.errors import InputError
from qkan_orch.service.api.bounds import check_estimate, check_rounds, check_samples, round_rows
from qkan_orch.service.api.budgets import check_budget
from qkan_orch.service.api.errors import HTTPProblem, not_found
from qkan_orch.service.api.job_views import job_out
from qkan_orch.service.api.schemas import JobOut, JobRequest
from qkan_orch.service.broker import ADVANCE_TASK
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.arrays import pack_arrays
from qkan_orch.service.store.models import get_model
from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import ApiKey, Job


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
    model_row = get_model(session, key.id, body.model_id)
    if model_row is None:
        raise not_found("model", body.model_id)
    check_samples(settings, inputs.shape[0], "inputs")
    spec = parse_spec(model_row.spec)
    inputs = validate_inputs(inputs, spec.in_dim)
    rows = round_rows(spec, inputs.shape[0])
    check_rounds(settings, rows, inputs.shape[0])
    backend = get_backend(body.backend)
    shots = backend.capabilities().shots_for(body.shots)
    if shots is not None and shots > settings.max_shots:
        raise InputError("shots", f"{shots} exceeds this service's limit of {settings.max_shots}")
    mitigation = Mitigation.parse(body.mitigation, backend.capabilities())
    # the estimate validates shots, pack and options, and counts calibration rows and fold scales
    estimate = mitigated(backend, mitigation).estimate(rows, shots, body.pack, body.options, columns=spec.columns)
    check_estimate(settings, estimate)
    check_budget(session, key, estimate)
    job = create_job(
        session, broker, key, kind="inference", model_id=model_row.id, backend=body.backend, shots=shots,
        pack=body.pack, options=body.options, arrays={"inputs": inputs}, rounds_total=len(rows),
        idempotency_key=body.idempotency_key, request_hash=request_hash, estimate=estimate,
        mitigation=mitigation.to_json(),
    )
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
