"""Deserialised models by id, so a job's steps do not parse its model again each time."""

from collections import OrderedDict

from sqlalchemy import select
from sqlalchemy.orm import Session

from qkan_orch.models import Model, model_from_bytes
from qkan_orch.service.store.tables import StoredModel


class ModelCache:
    """The last ``size`` models used; safe because stored models never change (only get deleted, never under
    active jobs)."""

    def __init__(self, size: int = 32) -> None:
        self.size, self.items = size, OrderedDict[str, Model]()

    def get(self, session: Session, model_id: str) -> Model | None:
        """The model, or None if it was deleted."""
        if model_id not in self.items:
            blob = session.scalar(select(StoredModel.blob).where(StoredModel.id == model_id))
            if blob is None:
                return None
            self.items[model_id] = model_from_bytes(blob, source=f"model {model_id}")
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        self.items.move_to_end(model_id)
        return self.items[model_id]


MODELS = ModelCache()
