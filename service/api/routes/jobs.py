"""/v1/jobs: submit inference, follow it (status, events), fetch results, cancel."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer
from sse_starlette.sse import EventSourceResponse

from qkan_orch.models.errors import InputError
from qkan_orch.service.api.deps import BrokerDep, KeyDep, SessionDep, SettingsDep
from qkan_orch.service.api.errors import ERROR_RESPONSES, ERROR_RESPONSES_SUBMIT, HTTPProblem, not_found
from qkan_orch.service.api.job_records import submit_inference
from qkan_orch.service.api.job_views import job_out, jobs_out
from qkan_orch.service.api.schemas import JobOut, JobPage, JobRequest, JobResultOut
from qkan_orch.service.api.uploads import read_table
from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.arrays import unpack_arrays
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.states import TERMINAL, JobState
from qkan_orch.service.store.tables import ApiKey, Job, JobEvent, JobResult

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
    job, replayed = await run_in_threadpool(submit_inference, session, broker, settings, key, body, inputs)
    if replayed:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


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
        raise HTTPProblem(415, "unsupported_media_type", "send application/json or multipart/form-data")
    raw = await request.body()
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPProblem(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
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
    return JobPage(items=jobs_out(session, list(rows)), total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut, summary="State, progress, timings, provider job ids")
def get_job(job_id: str, key: KeyDep, session: SessionDep) -> JobOut:
    return job_out(session, _own_job(session, key, job_id))


@router.get("/{job_id}/result", response_model=JobResultOut, summary="Outputs and standard errors",
            responses={409: {"description": "The job has not succeeded"}})
def get_result(job_id: str, key: KeyDep, session: SessionDep,
               layers: Annotated[bool, Query(description="Include every QKAN layer's output")] = False) -> JobResultOut:
    job = _own_job(session, key, job_id)
    row = session.get(JobResult, job.id)
    if job.state != JobState.SUCCEEDED or row is None:
        raise HTTPProblem(409, "not_ready", f"the job is {job.state}; results exist once it has succeeded", "job_id")
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
    if job.state == JobState.CANCELLED:
        return job_out(session, job)
    if job.state in TERMINAL:
        raise HTTPProblem(409, "already_finished", f"the job already {job.state}", "job_id")
    if job.task_id:
        broker.control.revoke(job.task_id)
    if store.cancel_if_idle(session, job.id):
        store.add_event(session, job.id, "state", state=JobState.CANCELLED)
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
            created = {"at": job.created_at.isoformat(), "state": JobState.QUEUED}
            yield {"id": "0", "event": "state", "data": json.dumps(created)}
            last = 0
        while True:
            rows, state = await run_in_threadpool(_events_after, url, job_id, last)
            for row in rows:
                last = row.id
                yield {"id": str(row.id), "event": row.kind, "data": json.dumps({"at": row.at.isoformat(), **row.data})}
            if state in TERMINAL and not rows:
                return
            await asyncio.sleep(0.25)

    return EventSourceResponse(stream(), ping=15)


def _events_after(url: str, job_id: str, last: int) -> tuple[list[JobEvent], str]:
    with session_scope(url) as session:
        rows = list(session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > last).order_by(JobEvent.id).limit(200)
        ))
        state = session.scalar(select(Job.state).where(Job.id == job_id)) or JobState.FAILED
    return rows, state
