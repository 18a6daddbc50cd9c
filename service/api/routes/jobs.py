"""/v1/jobs: submit inference, follow it (status, events), fetch results, cancel."""

import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from functools import partial
from typing import Annotated, Any

import numpy as np
from celery import Celery
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, defer
from sse_starlette.sse import EventSourceResponse

from qkan_orch.models.errors import InputError
from qkan_orch.service.api.deps import CourierDep, EventHubDep, KeyDep, OffsetQuery, SessionDep, SettingsDep
from qkan_orch.service.api.errors import (
    ERROR_RESPONSES,
    ERROR_RESPONSES_SUBMIT,
    ErrorResponse,
    HTTPProblem,
    field_path,
    not_found,
)
from qkan_orch.service.api.event_hub import SlotStream
from qkan_orch.service.api.job_records import DuplicateSubmission, cancel_job, submit_inference
from qkan_orch.service.api.job_views import job_out, jobs_out
from qkan_orch.service.api.schemas import JobOut, JobPage, JobRequest, JobResultOut
from qkan_orch.service.api.uploads import inputs_array, read_table
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.arrays import unpack_arrays
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import ApiKey, Job, JobResult

log = logging.getLogger("qkan.api")
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
        "mitigation": {"type": "string", "description": "none | readout | zne | readout+zne, or a JSON object"},
        "idempotency_key": {"type": "string"},
    },
}

IdempotencyHeader = Annotated[str | None, Header(alias="Idempotency-Key",
                                                 description="The body's idempotency_key, as a header")]


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
async def submit(request: Request, key: KeyDep, idempotency_key: IdempotencyHeader = None) -> Response:
    """Inputs as a JSON array in the body, or as an uploaded .npy/.csv (multipart).

    Of concurrent submissions with one idempotency key (header or body field) one creates the job; the others
    lose the insert to the unique constraint and, submitting again, replay it.

    The busiest route, so it asks FastAPI for no more than it must: settings and broker are read from the app's
    state rather than solved as dependencies, and the answer is the job's JSON, not a model FastAPI validates
    and serialises again (bench/results/service_load.md).
    """
    settings: Settings = request.app.state.settings
    parse = await _read_submission(request, settings, idempotency_key)
    job, replayed = await run_in_threadpool(_parse_and_submit, parse, request.app.state.celery, settings, key)
    return Response(job.model_dump_json(), status_code=200 if replayed else 202, media_type="application/json",
                    headers={"Location": f"/v1/jobs/{job.id}"})


Parse = Callable[[], tuple[JobRequest, np.ndarray]]


def _parse_and_submit(parse: Parse, broker: Celery, settings: Settings, key: ApiKey) -> tuple[JobOut, bool]:
    """Parse, then submit in a session of its own, on one worker thread: each thread hop costs the event loop
    about as much as parsing a small body, and a session dependency costs two (bench/results/service_load.md).
    The parse holds no connection."""
    body, inputs = parse()
    with session_scope(settings.resolved_database_url) as session:
        try:
            return submit_inference(session, broker, settings, key, body, inputs)
        except DuplicateSubmission:
            return submit_inference(session, broker, settings, key, body, inputs)


async def _read_submission(request: Request, settings: Settings, idempotency_key: str | None) -> Parse:
    """Receive the body here; the returned parse runs on a thread: a large upload never stalls the event loop
    (/healthz).

    A thread does not help JSON: ``json.loads`` holds the interpreter for the whole parse (about 0.5 s
    for 16 MB), so JSON bodies have a smaller limit and larger inputs go as .npy/.csv, parsed in blocks.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("inputs_file")
        if upload is None or isinstance(upload, str):
            raise InputError("inputs_file", "upload the inputs as a .npy or .csv file part")
        data = await upload.read()
        fields: dict[str, Any] = {k: v for k, v in form.items() if k != "inputs_file" and isinstance(v, str)}
        return partial(_parse_form, fields, data, upload.filename or "inputs", idempotency_key)
    if not content_type.startswith("application/json"):
        raise HTTPProblem(415, "unsupported_media_type", "send application/json or multipart/form-data")
    raw = await request.body()
    if len(raw) > settings.max_json_bytes:
        raise HTTPProblem(413, "payload_too_large", f"a JSON body is limited to {settings.max_json_bytes} bytes "
                          f"(QKAN_MAX_JSON_BYTES); upload larger inputs as a .npy or .csv file", "inputs")
    return partial(_parse_json, raw, idempotency_key)


def _parse_form(fields: dict[str, Any], data: bytes, filename: str,
                idempotency_key: str | None) -> tuple[JobRequest, np.ndarray]:
    inputs = read_table(data, "inputs_file", filename)
    if "options" in fields:
        try:
            fields["options"] = json.loads(fields["options"])
        except json.JSONDecodeError:
            raise InputError("options", "is not valid JSON") from None
    if fields.get("mitigation", "").startswith("{"):
        try:
            fields["mitigation"] = json.loads(fields["mitigation"])
        except json.JSONDecodeError:
            raise InputError("mitigation", "is not valid JSON") from None
    fields["inputs"] = []
    return _validate(fields, idempotency_key), inputs


def _parse_json(raw: bytes, idempotency_key: str | None) -> tuple[JobRequest, np.ndarray]:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPProblem(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    body = _validate(obj, idempotency_key)
    return body, inputs_array(body.inputs)


def _validate(obj: Any, idempotency_key: str | None) -> JobRequest:
    """The body as a JobRequest; the ``Idempotency-Key`` header counts as its field (and must agree with it)."""
    if idempotency_key is not None and isinstance(obj, dict):
        if obj.get("idempotency_key") not in (None, idempotency_key):
            raise InputError("idempotency_key", "differs from the Idempotency-Key header; send one of them")
        obj = {**obj, "idempotency_key": idempotency_key}
    try:
        return JobRequest.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(field_path(first["loc"]) or "body", first["msg"]) from None


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
    offset: OffsetQuery = 0,
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
               layers: Annotated[bool, Query(description="Include every QKAN layer's output")] = False,
               activations: Annotated[bool, Query(description="Include every edge's activation per layer")] = False,
               ) -> JobResultOut:
    job = _own_job(session, key, job_id)
    row = session.get(JobResult, job.id)
    if job.state != JobState.SUCCEEDED or row is None:
        raise HTTPProblem(409, "not_ready", f"the job is {job.state}; results exist once it has succeeded", "job_id")
    arrays = unpack_arrays(row.arrays)
    if job.kind == "train":
        return JobResultOut(job_id=job.id, model_id=row.summary.get("model_id"), losses=arrays["losses"].tolist())
    out = JobResultOut(job_id=job.id, outputs=arrays["outputs"].tolist(), stderr=arrays["stderr"].tolist())
    if "raw_outputs" in arrays:
        out.raw_outputs, out.raw_stderr = arrays["raw_outputs"].tolist(), arrays["raw_stderr"].tolist()
    if layers:
        count = sum(1 for k in arrays if k.startswith("layer."))
        out.layers = [arrays[f"layer.{k}"].tolist() for k in range(count)]
    if activations and "activation.0" in arrays:  # jobs stored before activations were kept have none
        count = sum(1 for k in arrays if k.startswith("activation."))
        out.activations = [arrays[f"activation.{k}"].tolist() for k in range(count)]
    return out


@router.delete("/{job_id}", status_code=202, response_model=JobOut, summary="Cancel a job",
               responses={409: {"description": "The job already finished"}})
def cancel(job_id: str, key: KeyDep, session: SessionDep, courier: CourierDep) -> JobOut:
    """Queued jobs end at once; running ones stop after their current step, cancelling provider jobs.

    The database decides and answers, broker or not: the job's pending message is revoked, and a flagged
    job woken, through the courier, which keeps trying while the broker is away (a message that outlives
    its cancelled job finds nothing to do).
    """
    return job_out(session, cancel_job(session, courier, _own_job(session, key, job_id)))


@router.get("/{job_id}/events", summary="Server-sent progress events until the job ends",
            response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "An event stream"},
                       429: {"model": ErrorResponse, "description": "too many open streams for this key"}})
async def events(job_id: str, request: Request, key: KeyDep, settings: SettingsDep,
                 hub: EventHubDep) -> EventSourceResponse:
    """Holds no database connection while it waits: the API's one poller reads for every open stream."""
    created_at = await run_in_threadpool(_created_at, settings.resolved_database_url, key, job_id)
    last_id = request.headers.get("last-event-id", "")
    start = int(last_id) if last_id.isdigit() else -1
    release = hub.reserve(key.id)

    async def stream() -> AsyncIterator[dict[str, str]]:
        subscription = hub.subscribe(job_id, max(start, 0), JobState.QUEUED if start <= 0 else None)
        try:
            if start < 0:  # event 0: the job was created (queued)
                yield {"id": "0", "event": "state",
                       "data": json.dumps({"at": created_at.isoformat(), "state": JobState.QUEUED})}
            while True:
                batch = await subscription.inbox.get()
                for event in batch.events:
                    yield event
                if batch.ended:
                    return
        finally:
            hub.unsubscribe(subscription)

    return SlotStream(stream(), release=release, ping=15)


def _created_at(url: str, key: ApiKey, job_id: str) -> datetime:
    """Ownership checked in a session of its own, closed before the stream starts."""
    with session_scope(url) as session:
        return _own_job(session, key, job_id).created_at
