"""/v1/models: upload, list, inspect, delete, and train (as a job)."""

import json
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from sqlalchemy import func, select

from qkan_orch.models import model_from_bytes, parse_spec
from qkan_orch.models.errors import InputError
from qkan_orch.models.functions import FUNCTIONS, get_function
from qkan_orch.models.spec import SequenceSpec
from qkan_orch.models.training import OPTIMIZERS
from qkan_orch.service.api.bounds import check_training, spec_limits
from qkan_orch.service.api.deps import BrokerDep, KeyDep, OffsetQuery, SessionDep, SettingsDep
from qkan_orch.service.api.errors import ERROR_RESPONSES, HTTPProblem, not_found
from qkan_orch.service.api.job_records import create_job
from qkan_orch.service.api.job_views import job_out
from qkan_orch.service.api.schemas import JobOut, ModelOut, ModelPage
from qkan_orch.service.api.uploads import read_table
from qkan_orch.service.store.models import get_model, list_models
from qkan_orch.service.store.models import upload_model as store_upload
from qkan_orch.service.store.states import ACTIVE
from qkan_orch.service.store.tables import Job

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
    model = model_from_bytes(file.file.read(), parsed, source=file.filename or "upload", limits=spec_limits(settings))
    row, created = store_upload(session, key.id, name or file.filename or "model", model)
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


@router.post("/train", status_code=202, response_model=JobOut, summary="Train a model (runs as a job)")
def train(
    key: KeyDep,
    session: SessionDep,
    settings: SettingsDep,
    broker: BrokerDep,
    spec: Annotated[str, Form(description='Spec JSON, e.g. {"width": [2, 3, 1], "reps": 3}')],
    function: Annotated[str | None, Form(description=f"Built-in target: {', '.join(FUNCTIONS)}")] = None,
    csv: Annotated[UploadFile | None, File(description="CSV: input columns then target columns")] = None,
    samples: Annotated[int, Form(ge=1, description="Points sampled from the built-in function")] = 256,
    optimizer: Annotated[str, Form(description="adam | lbfgs")] = "lbfgs",
    steps: Annotated[int, Form(ge=1)] = 30,
    lr: Annotated[float | None, Form(gt=0, le=10)] = None,
    seed: Annotated[int, Form(ge=0, le=2**31 - 1)] = 0,
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> JobOut:
    """Spec, samples, steps and the memory of a step are checked before any data is made or read; a plain
    ``def``, so a large CSV is parsed on a thread."""
    try:
        spec_obj = json.loads(spec)
    except json.JSONDecodeError:
        raise InputError("spec", "is not valid JSON") from None
    parsed = parse_spec(spec_obj)
    if isinstance(parsed, SequenceSpec):
        raise InputError("spec.kind", f"{parsed.kind} models train with 'qkan-orch train --model {parsed.kind}' and "
                                      "upload with POST /v1/models; the service does not train them yet")
    spec_limits(settings).check(parsed)
    if optimizer not in OPTIMIZERS:
        raise InputError("optimizer", f"'{optimizer}' is not one of {', '.join(OPTIMIZERS)}")
    if (function is None) == (csv is None):
        raise InputError("function", "give either a built-in function or a CSV upload")
    if csv is not None:
        data = read_table(csv.file.read(), "csv", csv.filename or "data.csv")
        if data.shape[1] != parsed.in_dim + parsed.out_dim:
            raise InputError("csv", f"has {data.shape[1]} columns; the spec needs {parsed.in_dim} + {parsed.out_dim}")
        check_training(settings, parsed, data.shape[0], steps, "csv")
        x, y = data[:, : parsed.in_dim], data[:, parsed.in_dim :]
    else:
        target = get_function(function or "")
        if target.in_dim != parsed.in_dim or parsed.out_dim != 1:
            raise InputError("function", f"'{target.name}' maps {target.in_dim} input(s) to 1 output")
        check_training(settings, parsed, samples, steps, "samples")
        xt = target.sample(samples, seed=seed)
        x, y = xt.numpy(), target(xt).numpy()
    options = {"spec": spec_obj, "optimizer": optimizer, "steps": steps, "lr": lr, "seed": seed, "name": name}
    job = create_job(
        session, broker, key, kind="train", model_id=None, backend="train", shots=None, pack=None,
        options=options, arrays={"x": np.asarray(x), "y": np.asarray(y)}, rounds_total=0,
    )
    return job_out(session, job)
