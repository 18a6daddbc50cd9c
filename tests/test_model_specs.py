"""A submission's model spec: read from the row every time, parsed once per content hash.

``store.models.model_spec`` keeps parsed specs by content hash, not by model
id: the row is still read on every call, so a model deleted (by this or any
other API process) is gone at once, and another key's model stays invisible.
"""

from pathlib import Path

from sqlalchemy import delete

from conftest import make_model
from qkan_orch.service.store import models as store
from qkan_orch.service.store.database import session_scope, upgrade
from qkan_orch.service.store.tables import ApiKey, StoredModel


def test_a_spec_is_the_models_own_and_gone_with_its_row(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    with session_scope(url) as session:
        alice, bob = ApiKey(name="a", prefix="qk_", key_hash="a"), ApiKey(name="b", prefix="qk_", key_hash="b")
        session.add_all([alice, bob])
        session.flush()
        small, wide = make_model(width=[2, 2, 1]), make_model(width=[3, 4, 2])
        first = store.insert_model(session, alice.id, "small", small, source="upload").id
        second = store.insert_model(session, alice.id, "wide", wide, source="upload").id
        session.commit()
        for _ in range(2):  # parsed, then from the cache: the same specs, each its own model's
            assert store.model_spec(session, alice.id, first) == small.spec
            assert store.model_spec(session, alice.id, second) == wide.spec
        assert store.model_spec(session, bob.id, first) is None  # another key's model
        assert store.model_spec(session, alice.id, "no-such-model") is None
        session.execute(delete(StoredModel).where(StoredModel.id == first))
        session.commit()
        assert store.model_spec(session, alice.id, first) is None  # cached spec, row gone: gone
        assert store.model_spec(session, alice.id, second) == wide.spec
