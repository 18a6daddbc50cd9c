"""/v1/jobs: submit inference, follow it (status, events), fetch results, cancel."""

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

import numpy as np
from celery import Celery
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer
from sse_starlette.sse import EventSourceResponse

from qkan_orch.backends import get_backend
from qkan_orch.circuits import validate_inputs
from qkan_orch.models.errors import InputError
from qkan_orch.service.api.budgets import check_budget
from qkan_orch.service.api.deps import BrokerDep, KeyDep, SessionDep, SettingsDep
from qkan_orch.service.api.errors import ERROR_RESPONSES, ERROR_RESPONSES_SUBMIT, ApiError, not_found
from qkan_orch.service.api.schemas import JobOut, JobPage, JobRequest, JobResultOut, JobState, RoundOut
from qkan_orch.service.api.uploads import read_table
from qkan_orch.service.settings import Settings
from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.arrays import pack_arrays, unpack_arrays
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.models import get_model
from qkan_orch.service.store.tables import ApiKey, Job, JobEvent, JobResult, Round
from qkan_orch.workers.routing import queue_for

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)

_MULTIPART_BODY = {
    "type": "object",
    "required": ["model_id", "inputs_file"],
    "properties": {
        "model_id": {"type": "string"},
        "inputs_file": {"type": "string", "format": "binary", "description": ".npy or .csv, one sample per row"},
        "backend": {"type": "string"},
        "shots": {"type": "integer", "minimum": 1},
        "pack": {"type": "integer", "minimum": 1},
        "options": {"type": "string", "description": "JSON object"},
        "idempotency_key": {"type": "string"},
    },
}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit an inference job",
    responses={**ERROR_RESPONSES_SUBMIT,
               200: {"model": JobOut, "description": "Replay of an earlier submission with this idempotency_key"}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}},
        "multipart/form-data": {"schema": _MULTIPART_BODY},
    }}},
)
async def submit(request: Request, response: Response, key: KeyDep, session: SessionDep,
                 settings: SettingsDep, broker: BrokerDep) -> JobOut:
    """Inputs as a JSON array in the body, or as an uploaded .npy/.csv (multipart)."""
    body, inputs = await _read_submission(request)
    job, replayed = await run_in_threadpool(_submit, session, broker, settings, key, body, inputs)
    if replayed:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


def _submit(session: Session, broker: Celery, settings: Settings, key: ApiKey, body: JobRequest,
            inputs: np.ndarray) -> tuple[JobOut, bool]:
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
                raise ApiError(409, "idempotency_conflict", "this idempotency_key was used for a different request",
                               "idempotency_key")
            return job_out(session, existing), True
    model_row = get_model(session, key.id, body.model_id)
    if model_row is None:
        raise not_found("model", body.model_id)
    if inputs.shape[0] > settings.max_samples:
        raise InputError("inputs", f"has {inputs.shape[0]} samples; the limit is {settings.max_samples}")
    spec = model_row.spec
    in_dim = spec["in_dim"] if spec.get("kind") == "hqkan" else spec["width"][0]
    inputs = validate_inputs(inputs, in_dim)
    backend = get_backend(body.backend)
    caps = backend.capabilities()
    shots = body.shots if caps.shot_based else None
    if caps.shot_based and shots is None:
        shots = 1000
    if shots is not None and shots > settings.max_shots:
        raise InputError("shots", f"{shots} exceeds this service's limit of {settings.max_shots}")
    qkan = spec["qkan"] if spec.get("kind") == "hqkan" else spec
    widths = qkan["width"]
    rounds = len(widths) - (2 if qkan.get("is_map") else 1)
    rows = [inputs.shape[0] * widths[k] * widths[k + 1] for k in range(rounds)]  # before deduplication
    estimate = backend.estimate(rows, shots, body.pack, body.options)  # validates shots, pack, options too
    check_budget(session, key, estimate)
    job = create_job(
        session, broker, key, kind="inference", model_id=model_row.id, backend=body.backend,
        queue=queue_for(body.backend), shots=shots, pack=body.pack,
        options=body.options, arrays={"inputs": inputs}, rounds_total=rounds, idempotency_key=body.idempotency_key,
        request_hash=request_hash, estimate=asdict(estimate),
    )
    return job_out(session, job), False


async def _read_submission(request: Request) -> tuple[JobRequest, np.ndarray]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("inputs_file")
        if upload is None or isinstance(upload, str):
            raise InputError("inputs_file", "upload the inputs as a .npy or .csv file part")
        inputs = read_table(await upload.read(), "inputs_file", upload.filename or "inputs")
        fields: dict[str, Any] = {k: v for k, v in form.items() if k != "inputs_file" and isinstance(v, str)}
        if "options" in fields:
            try:
                fields["options"] = json.loads(fields["options"])
            except json.JSONDecodeError:
                raise InputError("options", "is not valid JSON") from None
        fields["inputs"] = []
        body = _validate(fields)
        return body, inputs
    if not content_type.startswith("application/json"):
        raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")
    raw = await request.body()
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    body = _validate(obj)
    rows = body.inputs
    if not rows:
        raise InputError("inputs", "is empty: at least one sample is needed")
    if len({len(r) for r in rows}) != 1:
        raise InputError("inputs", "rows have different lengths")
    return body, np.asarray(rows, dtype=np.float64)


def _validate(obj: Any) -> JobRequest:
    try:
        return JobRequest.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise InputError(field or "body", first["msg"]) from None


def create_job(session: Session, broker: Celery, key: ApiKey, *, kind: str, model_id: str | None, backend: str,
               queue: str, shots: int | None, pack: int | str | None, options: dict[str, Any],
               arrays: dict[str, np.ndarray], rounds_total: int, idempotency_key: str | None,
               request_hash: str = "", estimate: dict[str, Any] | None = None) -> Job:
    """Insert the job, commit, then publish its first step; undo the insert if the broker refuses.

    The message id is chosen here and stored with the row, so one commit records both.
    """
    first = next(iter(arrays.values()))
    job = Job(
        id=str(uuid.uuid4()), owner_id=key.id, kind=kind, model_id=model_id, backend=backend, queue=queue,
        shots=shots, pack=None if pack == "auto" else pack, pack_auto=pack == "auto", options=options,
        idempotency_key=idempotency_key, request_hash=request_hash, state="queued", rounds_total=rounds_total,
        samples=int(first.shape[0]), inputs=pack_arrays(arrays), task_id=uuid.uuid4().hex, estimate=estimate,
    )
    session.add(job)  # its "queued" event is the row itself: the events stream starts with it
    try:
        session.commit()
    except IntegrityError:  # a concurrent submission with the same idempotency key won the race
        session.rollback()
        raise ApiError(409, "idempotency_conflict", "a job with this idempotency_key is being created",
                       "idempotency_key") from None
    try:
        broker.send_task("qkan.advance", args=[job.id], queue=queue, task_id=job.task_id)
    except Exception as exc:
        session.delete(job)
        session.commit()
        raise ApiError(503, "broker_unavailable", f"the job queue is unreachable ({type(exc).__name__})") from None
    return job


def job_out(session: Session, job: Job) -> JobOut:
    rounds = [] if job.state == "queued" else list(
        session.scalars(select(Round).where(Round.job_id == job.id).order_by(Round.number))
    )
    provider_ids = [pid for r in rounds for pid in r.provider_job_ids]
    if job.in_flight:
        provider_ids += [p for p in job.in_flight["handle"]["provider_job_ids"] if p not in provider_ids]
    return JobOut(
        id=job.id, kind=job.kind, model_id=job.model_id, backend=job.backend, queue=job.queue,  # type: ignore[arg-type]
        state=job.state, rounds_done=job.rounds_done, rounds_total=job.rounds_total,  # type: ignore[arg-type]
        samples=job.samples, shots=job.shots, pack=job.requested_pack, options=job.options,
        estimate=job.estimate, placement=job.placement, qpu_seconds=job.qpu_seconds, cost=job.cost,  # type: ignore[arg-type]
        shots_used=job.shots_used,
        executions=job.executions, provider_job_ids=provider_ids, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at,
        queued_seconds=_seconds(job.created_at, job.started_at), run_seconds=_seconds(job.started_at, job.finished_at),
        error={"code": job.error_code, "message": job.error_message or ""} if job.error_code else None,  # type: ignore[arg-type]
        rounds=[RoundOut.model_validate(r) for r in rounds],
    )


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def _own_job(session: Session, key: ApiKey, job_id: str) -> Job:
    job = session.get(Job, job_id, options=[defer(Job.inputs)])
    if job is None or job.owner_id != key.id:
        raise not_found("job", job_id)
    return job


@router.get("", response_model=JobPage, summary="List your jobs, newest first")
def list_jobs(
    key: KeyDep,
    session: SessionDep,
    state: Annotated[JobState | None, Query()] = None,
    backend: Annotated[str | None, Query(max_length=200)] = None,
    model_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> JobPage:
    query = select(Job).options(defer(Job.inputs)).where(Job.owner_id == key.id)
    if state:
        query = query.where(Job.state == state)
    if backend:
        query = query.where(Job.backend == backend)
    if model_id:
        query = query.where(Job.model_id == model_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset))
    return JobPage(items=[job_out(session, j) for j in rows], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut, summary="State, progress, timings, provider job ids")
def get_job(job_id: str, key: KeyDep, session: SessionDep) -> JobOut:
    return job_out(session, _own_job(session, key, job_id))


@router.get("/{job_id}/result", response_model=JobResultOut, summary="Outputs and standard errors",
            responses={409: {"description": "The job has not succeeded"}})
def get_result(job_id: str, key: KeyDep, session: SessionDep,
               layers: Annotated[bool, Query(description="Include every QKAN layer's output")] = False) -> JobResultOut:
    job = _own_job(session, key, job_id)
    row = session.get(JobResult, job.id)
    if job.state != "succeeded" or row is None:
        raise ApiError(409, "not_ready", f"the job is {job.state}; results exist once it has succeeded", "job_id")
    arrays = unpack_arrays(row.arrays)
    if job.kind == "train":
        return JobResultOut(job_id=job.id, model_id=row.summary.get("model_id"), losses=arrays["losses"].tolist())
    out = JobResultOut(job_id=job.id, outputs=arrays["outputs"].tolist(), stderr=arrays["stderr"].tolist())
    if layers:
        count = sum(1 for k in arrays if k.startswith("layer."))
        out.layers = [arrays[f"layer.{k}"].tolist() for k in range(count)]
    return out


@router.delete("/{job_id}", status_code=202, response_model=JobOut, summary="Cancel a job",
               responses={409: {"description": "The job already finished"}})
def cancel(job_id: str, key: KeyDep, session: SessionDep, broker: BrokerDep) -> JobOut:
    """Queued jobs end at once; running ones stop after their current step, cancelling provider jobs."""
    job = _own_job(session, key, job_id)
    if job.state == "cancelled":
        return job_out(session, job)
    if job.state in store.TERMINAL:
        raise ApiError(409, "already_finished", f"the job already {job.state}", "job_id")
    if job.task_id:
        broker.control.revoke(job.task_id)
    if store.cancel_if_idle(session, job.id):
        store.add_event(session, job.id, "state", state="cancelled")
    else:  # a worker holds it or a provider job is in flight: the next step cancels both
        job.cancel_requested = True
        session.commit()
        broker.send_task("qkan.advance", args=[job.id], queue=job.queue)
    session.commit()
    session.refresh(job)
    return job_out(session, job)


@router.get("/{job_id}/events", summary="Server-sent progress events until the job ends",
            response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "An event stream"}})
async def events(job_id: str, request: Request, key: KeyDep, session: SessionDep,
                 settings: SettingsDep) -> EventSourceResponse:
    job = _own_job(session, key, job_id)
    last_id = request.headers.get("last-event-id", "")
    start = int(last_id) if last_id.isdigit() else -1
    url = settings.resolved_database_url

    async def stream() -> AsyncIterator[dict[str, str]]:
        last = start
        if last < 0:  # event 0: the job was created (queued)
            created = {"at": job.created_at.isoformat(), "state": "queued"}
            yield {"id": "0", "event": "state", "data": json.dumps(created)}
            last = 0
        while True:
            rows, state = await run_in_threadpool(_events_after, url, job_id, last)
            for row in rows:
                last = row.id
                yield {"id": str(row.id), "event": row.kind, "data": json.dumps({"at": row.at.isoformat(), **row.data})}
            if state in store.TERMINAL and not rows:
                return
            await asyncio.sleep(0.25)

    return EventSourceResponse(stream(), ping=15)


def _events_after(url: str, job_id: str, last: int) -> tuple[list[JobEvent], str]:
    with session_scope(url) as session:
        rows = list(session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > last).order_by(JobEvent.id).limit(200)
        ))
        state = session.scalar(select(Job.state).where(Job.id == job_id)) or "failed"
    return rows, state
