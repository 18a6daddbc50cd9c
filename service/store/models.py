"""Stored models: canonical safetensors bytes (spec inside), their hash and size."""

import hashlib
import json
import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from qkan_orch.models import Model, model_to_bytes
from qkan_orch.models.spec import spec_to_json
from qkan_orch.service.store.tables import StoredModel


def insert_model(session: Session, owner_id: int, name: str, model: Model, source: str) -> StoredModel:
    """Store ``model`` re-serialised as our safetensors, whatever format it arrived in."""
    blob = model_to_bytes(model)
    row = StoredModel(
        id=str(uuid.uuid4()),
        owner_id=owner_id,
        name=name,
        spec=json.loads(spec_to_json(model.spec)),
        parameter_count=sum(p.numel() for p in model.parameters() if p.requires_grad),
        content_hash=hashlib.sha256(blob).hexdigest(),
        blob=blob,
        source=source,
    )
    session.add(row)
    session.flush()
    return row


def get_model(session: Session, owner_id: int, model_id: str) -> StoredModel | None:
    row = session.get(StoredModel, model_id)
    return row if row is not None and row.owner_id == owner_id else None


def list_models(session: Session, owner_id: int, limit: int, offset: int) -> tuple[list[StoredModel], int]:
    query = select(StoredModel).where(StoredModel.owner_id == owner_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(StoredModel.created_at.desc()).limit(limit).offset(offset))
    return list(rows), total
