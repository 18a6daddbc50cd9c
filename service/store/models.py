"""Stored models: canonical safetensors bytes (spec inside), their hash and size.

Uploads are content-addressed per key: ``digest`` is a SHA-256 of the canonical
spec JSON and the tensors (name, dtype, shape, bytes, in name order), not of the
safetensors file, whose metadata order differs from one process to the next. A
unique (owner_id, digest) index makes the same upload, however often and however
concurrently sent, one model. Trained models and rows stored before uploads were
deduplicated have no digest. A noise-aware model's ``noise`` (the device and qubits it was trained for) is
both a column and the ``noise`` entry of its safetensors metadata.
"""

import hashlib
import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from sqlalchemy import Table, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from qkan_orch.models import Model, model_to_bytes, parse_spec
from qkan_orch.models.spec import ModelSpec, spec_to_json
from qkan_orch.service.store.tables import StoredModel


def model_digest(model: Model) -> str:
    """The same spec and weights give the same digest, whatever file format they arrived in."""
    digest = hashlib.sha256(spec_to_json(model.spec).encode())
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().contiguous().cpu()
        digest.update(f"\0{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(value.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def insert_model(session: Session, owner_id: int, name: str, model: Model, source: str,
                 digest: str | None = None, noise: dict[str, Any] | None = None) -> StoredModel:
    """Store ``model`` re-serialised as our safetensors, whatever format it arrived in."""
    blob = model_to_bytes(model, noise)
    row = StoredModel(
        id=str(uuid.uuid4()),
        owner_id=owner_id,
        name=name,
        spec=json.loads(spec_to_json(model.spec)),
        parameter_count=sum(p.numel() for p in model.parameters() if p.requires_grad),
        content_hash=hashlib.sha256(blob).hexdigest(),
        digest=digest,
        blob=blob,
        source=source,
        noise=noise,
    )
    session.add(row)
    session.flush()
    return row


def upload_model(session: Session, owner_id: int, name: str, model: Model, noise: dict[str, Any] | None = None
                 ) -> tuple[StoredModel, bool]:
    """The model this key already uploaded with the same spec and weights (False), or a new one (True).

    Commits: a concurrent identical upload that commits first wins the unique index, and this one then
    returns the winner's row, as a replay of a job's idempotency key does.
    """
    digest = model_digest(model)
    existing = _by_digest(session, owner_id, digest)
    if existing is not None:
        return existing, False
    try:
        row = insert_model(session, owner_id, name, model, source="upload", digest=digest, noise=noise)
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = _by_digest(session, owner_id, digest)
        if existing is None:
            raise
        return existing, False
    return row, True


def _by_digest(session: Session, owner_id: int, digest: str) -> StoredModel | None:
    return session.scalar(select(StoredModel).where(StoredModel.owner_id == owner_id, StoredModel.digest == digest))


def get_model(session: Session, owner_id: int, model_id: str) -> StoredModel | None:
    row = session.get(StoredModel, model_id)
    return row if row is not None and row.owner_id == owner_id else None


MODELS: Table = StoredModel.__table__  # type: ignore[assignment]
# Core, built once: a submission reads a model's owner and hash on every POST (the ORM's get of the whole row was
# 4.4 % of a submission's CPU, bench/results/service_load.md)
_OWNER_AND_HASH = select(MODELS.c.owner_id, MODELS.c.content_hash).where(MODELS.c.id == bindparam("model_id"))
_SPEC = select(MODELS.c.spec).where(MODELS.c.id == bindparam("model_id"))
_SPECS: OrderedDict[str, ModelSpec] = OrderedDict()  # parsed specs by content hash, the most recently used last
_SPECS_LOCK = threading.Lock()  # submissions run on the API's request threads
SPECS_KEPT = 256


def model_spec(session: Session, owner_id: int, model_id: str) -> ModelSpec | None:
    """The spec of the key's model, None if it has none of that id. The row is read every time (a model
    deleted by another API process is gone here too), the spec parsed once per content hash."""
    row = session.connection().execute(_OWNER_AND_HASH, {"model_id": model_id}).first()
    if row is None or row.owner_id != owner_id:
        return None
    return cached_spec(row.content_hash,
                       lambda: parse_spec(session.connection().execute(_SPEC, {"model_id": model_id}).scalar_one()))


def cached_spec(content_hash: str, read: Callable[[], ModelSpec]) -> ModelSpec:
    """The spec stored under ``content_hash``, ``read`` only the first time (and again once evicted, least
    recently used first): the hash covers the stored file, spec included, so the same hash is the same spec."""
    with _SPECS_LOCK:
        spec = _SPECS.get(content_hash)
        if spec is not None:
            _SPECS.move_to_end(content_hash)
            return spec
    spec = read()
    with _SPECS_LOCK:
        _SPECS[content_hash] = spec
        if len(_SPECS) > SPECS_KEPT:
            _SPECS.popitem(last=False)
    return spec


def list_models(session: Session, owner_id: int, limit: int, offset: int) -> tuple[list[StoredModel], int]:
    query = select(StoredModel).where(StoredModel.owner_id == owner_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(StoredModel.created_at.desc()).limit(limit).offset(offset))
    return list(rows), total
