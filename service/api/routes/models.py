"""/v1/models: upload, list, inspect, delete, extend (more re-uploads, same function), and train (as a job)."""

import json
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from qkan_orch.models import extend_reps, model_from_bytes, parse_spec
from qkan_orch.models.errors import InputError
from qkan_orch.models.functions import FUNCTIONS, get_function
from qkan_orch.models.network import check_extension
from qkan_orch.models.sequences import SERIES, TEST_FRACTION, get_series, split_by_time, windows_from_table
from qkan_orch.models.sequences import windows as series_windows
from qkan_orch.models.spec import SEQUENCE_KINDS, ModelSpec, SequenceSpec
from qkan_orch.models.storage import model_noise
from qkan_orch.models.training import OPTIMIZERS
from qkan_orch.service.api.bounds import check_training, spec_limits
from qkan_orch.service.api.deps import BrokerDep, KeyDep, OffsetQuery, SessionDep, SettingsDep
from qkan_orch.service.api.errors import ERROR_RESPONSES, HTTPProblem, field_path, not_found
from qkan_orch.service.api.job_records import create_job
from qkan_orch.service.api.job_views import job_out
from qkan_orch.service.api.rate_limits import check_active_jobs
from qkan_orch.service.api.schemas import JobOut, ModelOut, ModelPage
from qkan_orch.service.api.uploads import read_table
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.models import get_model, insert_model, list_models
from qkan_orch.service.store.models import upload_model as store_upload
from qkan_orch.service.store.states import ACTIVE
from qkan_orch.service.store.tables import ApiKey, Job

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


@router.post("", status_code=201, response_model=ModelOut, summary="Upload a trained model",
             responses={200: {"model": ModelOut, "description": "This key already uploaded the same spec and "
                                                                 "weights: that model"}})
def upload_model(
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    file: Annotated[UploadFile, File(description="Our .safetensors (spec inside) or a qkan .pt state_dict")],
    spec: Annotated[UploadFile | None, File(description="Spec JSON; for a .pt, the kwargs of its QKAN(...)")] = None,
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> ModelOut:
    """Weights are read without unpickling (safetensors, or ``torch.load(weights_only=True)``), and only once
    the spec and the file's header are within this service's limits. A plain ``def``: FastAPI runs it on a
    thread, so parsing a large upload never holds the event loop. Content-addressed: the same spec and weights
    from the same key (in any file format, under any name) answer 200 with the model stored first."""
    parsed = None
    if spec is not None:
        try:
            parsed = parse_spec(json.loads(spec.file.read()))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError("spec", "is not valid JSON") from None
    data, source = file.file.read(), file.filename or "upload"
    model = model_from_bytes(data, parsed, source=source, limits=spec_limits(settings))
    row, created = store_upload(session, key.id, name or file.filename or "model", model, model_noise(data, source))
    if not created:
        response.status_code = 200
    return ModelOut.model_validate(row)


@router.get("", response_model=ModelPage, summary="List your models")
def list_all(
    key: KeyDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: OffsetQuery = 0,
) -> ModelPage:
    rows, total = list_models(session, key.id, limit, offset)
    return ModelPage(items=[ModelOut.model_validate(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/{model_id}", response_model=ModelOut, summary="One model: spec, parameter count, hash")
def get_one(model_id: str, key: KeyDep, session: SessionDep) -> ModelOut:
    row = get_model(session, key.id, model_id)
    if row is None:
        raise not_found("model", model_id)
    return ModelOut.model_validate(row)


@router.delete("/{model_id}", status_code=204, summary="Delete a model no active job uses")
def delete(model_id: str, key: KeyDep, session: SessionDep) -> Response:
    row = get_model(session, key.id, model_id)
    if row is None:
        raise not_found("model", model_id)
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.model_id == model_id, Job.state.in_(ACTIVE))
    )
    if active:
        raise HTTPProblem(409, "model_in_use", f"{active} active job(s) use this model; cancel them first", "model_id")
    session.delete(row)
    return Response(status_code=204)


class ExtendRequest(BaseModel):
    """Layer extension of a stored model: more re-uploads per QKAN edge, the same function."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reps": 4, "name": "lstm-reps4"}]})

    reps: int = Field(ge=1, description="Re-uploads of the new model; more than the model has")
    name: str | None = Field(None, min_length=1, max_length=200, description="Default: the model's name + '-reps<R>'")


_EXTEND_BODY = {"required": True, "content": {content: {"schema": ExtendRequest.model_json_schema()} for content in (
    "application/json", "application/x-www-form-urlencoded", "multipart/form-data")}}


@router.post("/{model_id}/extend", status_code=201, response_model=ModelOut, summary="Layer extension: the same "
             "function with more re-uploads, stored as a new model", openapi_extra={"requestBody": _EXTEND_BODY})
async def extend(model_id: str, request: Request, key: KeyDep, session: SessionDep, settings: SettingsDep
                 ) -> ModelOut:
    """Copies θ and makes the added re-uploads identity (pz/rpz), in every QKAN layer: an HQKAN's, every gate of a
    QKAN-LSTM's. ``reps`` (JSON or form field) is checked against the model and this service's limits before the
    model is loaded; the body is read here, the model extended on a thread."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        fields: Any = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    elif content_type.startswith("application/json"):
        try:
            fields = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPProblem(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    else:
        raise HTTPProblem(415, "unsupported_media_type", "send application/json or a form with the field reps")
    try:
        body = ExtendRequest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(field_path(first["loc"]) or "body", first["msg"]) from None
    return await run_in_threadpool(_extend, session, settings, key, model_id, body)


def _extend(session: Session, settings: Settings, key: ApiKey, model_id: str, body: ExtendRequest) -> ModelOut:
    row = get_model(session, key.id, model_id)
    if row is None:
        raise not_found("model", model_id)
    spec = parse_spec(row.spec)
    try:
        check_extension(spec, body.reps)
    except InputError as exc:  # the model's kind or ansatz: the request names it by model_id
        raise InputError("reps" if exc.field == "reps" else "model_id", exc.message) from None
    try:
        spec_limits(settings).check(spec.with_reps(body.reps))
    except InputError as exc:
        raise InputError("reps", f"{exc.message} ({exc.field} of the extended model)") from None
    longer = extend_reps(model_from_bytes(row.blob, source=f"model {model_id}"), body.reps)
    stored = insert_model(session, key.id, body.name or f"{row.name}-reps{body.reps}"[:200], longer, source="train")
    return ModelOut.model_validate(stored)


@router.post("/train", status_code=202, response_model=JobOut, summary="Train a model (runs as a job)")
def train(
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    broker: BrokerDep,
    spec: Annotated[str, Form(description='Spec JSON, e.g. {"width": [2, 3, 1], "reps": 3}, or a sequence model\'s '
                                          '{"kind": "qkan-lstm", "hidden": 2, "window": 8}')],
    function: Annotated[str | None, Form(description=f"Built-in target: {', '.join(FUNCTIONS)}; for a sequence "
                                                     f"spec a built-in series: {', '.join(SERIES)}")] = None,
    csv: Annotated[UploadFile | None, File(description="CSV: input columns then target columns; for a sequence "
                                                       "spec (CSV or .npy) one window per row, its target last")
                   ] = None,
    samples: Annotated[int, Form(ge=1, description="Points sampled from the built-in function, or windows cut from "
                                                   f"the built-in series (the last {TEST_FRACTION:.0%} held out, as "
                                                   "the CLI does)")] = 256,
    optimizer: Annotated[str, Form(description="adam | lbfgs")] = "lbfgs",
    steps: Annotated[int, Form(ge=1)] = 30,
    lr: Annotated[float | None, Form(gt=0, le=10)] = None,
    seed: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0,
    name: Annotated[str | None, Form(max_length=200)] = None,
    noise: Annotated[str | None, Form(description="Noise-aware training (qkan, hqkan): an IBM fake device, e.g. "
                                                  "fake_melbourne; the model learns to compensate its noise")] = None,
    qubits: Annotated[str | None, Form(description="With noise: auto (the qubits aer:<device> packs onto by "
                                                   "default) or comma-separated physical qubits, e.g. 0,1,2,3")
                      ] = None,
) -> JobOut:
    """Spec, samples, steps and the memory of a step are checked before any data is made or read; a plain
    ``def``, so a large CSV is parsed on a thread. ``noise`` and ``qubits`` are resolved here (auto → the
    qubits), so the job's options say exactly what the worker trains through."""
    try:
        spec_obj = json.loads(spec)
    except json.JSONDecodeError:
        raise InputError("spec", "is not valid JSON") from None
    parsed = parse_spec(spec_obj)
    spec_limits(settings).check(parsed)
    if optimizer not in OPTIMIZERS:
        raise InputError("optimizer", f"'{optimizer}' is not one of {', '.join(OPTIMIZERS)}")
    if (function is None) == (csv is None):
        raise InputError("function", "give either a built-in function or a CSV upload")
    trained_for = _noise_setting(parsed, noise, qubits)
    table = None if csv is None else read_table(csv.file.read(), "csv", csv.filename or "data.csv")
    if isinstance(parsed, SequenceSpec):
        x, y = _windows(settings, parsed, function, table, samples, steps)
    else:
        x, y = _samples(settings, parsed, function, table, samples, steps, seed)
    check_active_jobs(session, settings, key, 1)
    options = {"spec": spec_obj, "optimizer": optimizer, "steps": steps, "lr": lr, "seed": seed, "name": name,
               "noise": trained_for}
    job = create_job(
        session, broker, key, kind="train", model_id=None, backend="train", shots=None, pack=None,
        options=options, arrays={"x": np.asarray(x), "y": np.asarray(y)}, rounds_total=0,
    )
    return job_out(session, job)


def _noise_setting(spec: ModelSpec, noise: str | None, qubits: str | None) -> dict[str, Any] | None:
    """``{"device", "qubits"}`` of a noise-aware run, refused by field (``noise``, ``qubits``); None: noise-free."""
    if noise is None:
        if qubits is not None:
            raise InputError("qubits", "places noise-aware training: give noise too (e.g. fake_melbourne)")
        return None
    if isinstance(spec, SequenceSpec):
        raise InputError("noise", "noise-aware training takes qkan and hqkan models; sequence models (qkan-lstm, "
                                  "hqkan-lstm, lstm) train noise-free for now")
    from qkan_orch.backends.emulator import emulated_device

    return emulated_device(noise, qubits).setting


def _samples(settings: Settings, spec: ModelSpec, function: str | None, table: np.ndarray | None, samples: int,
             steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A feed-forward model's (x, y): the table's columns, or draws of a built-in function."""
    if table is not None:
        if table.ndim != 2 or table.shape[1] != spec.in_dim + spec.out_dim:
            raise InputError("csv", f"has {table.shape[1]} columns; the spec needs {spec.in_dim} + {spec.out_dim}")
        check_training(settings, spec, table.shape[0], steps, "csv")
        return table[:, : spec.in_dim], table[:, spec.in_dim :]
    if function in SERIES:
        raise InputError("function", f"'{function}' is a sequence: train it with a sequence spec (kind "
                                     f"{' | '.join(SEQUENCE_KINDS)}, e.g. {{\"kind\": \"qkan-lstm\", \"hidden\": 4, "
                                     f"\"window\": 8}})")
    target = get_function(function or "")
    if target.in_dim != spec.in_dim or spec.out_dim != 1:
        raise InputError("function", f"'{target.name}' maps {target.in_dim} input(s) to 1 output")
    check_training(settings, spec, samples, steps, "samples")
    xt = target.sample(samples, seed=seed)
    return xt.numpy(), target(xt).numpy()


def _windows(settings: Settings, spec: SequenceSpec, function: str | None, table: np.ndarray | None, samples: int,
             steps: int) -> tuple[np.ndarray, np.ndarray]:
    """A sequence model's next-value windows (N, T, 1) and targets (N, 1): every window of an uploaded table, or
    ``samples`` windows of a built-in series split by time as ``qkan-orch train`` splits them (the training part:
    the same data give the same model through either)."""
    if (spec.in_dim, spec.total_out) != (1, 1):
        raise InputError("spec", f"takes windows of {spec.window} × {spec.in_dim} values to {spec.total_out} "
                                 "output(s); training data are windows of one value per step to one target")
    if table is not None:
        if table.ndim != 2 or table.shape[1] - 1 != spec.window:
            steps_held = f"windows of {table.shape[1] - 1} steps" if table.ndim == 2 else f"a {table.ndim}-D array"
            raise InputError("csv", f"holds {steps_held}; the spec's window is {spec.window} (one window per row, "
                                    "its target last)")
        check_training(settings, spec, table.shape[0], steps, "csv")
        return windows_from_table(table, "csv")
    if function not in SERIES:
        raise InputError("function", f"'{function}' is not a sequence; a {spec.kind} model trains on a built-in "
                                     f"series ({', '.join(SERIES)}) or a csv of windows")
    check_training(settings, spec, samples, steps, "samples")
    x, y = series_windows(get_series(function)(samples + spec.window), spec.window)
    return split_by_time(x, y)[:2]
