"""Timestamps read back from the store are aware and in UTC on every database (SQLite keeps no zone)."""

from contextlib import nullcontext
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from qkan_orch.service.store.database import session_scope, upgrade
from qkan_orch.service.store.tables import ApiKey
from service_env import postgres_url


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_stored_time_comes_back_aware_and_equal(database: str, tmp_path: Path) -> None:
    with postgres_url() if database == "postgresql" else nullcontext(f"sqlite:///{tmp_path / 'store.db'}") as url:
        upgrade(url)
        written = datetime(2030, 1, 2, 3, 4, 5, 678_000, tzinfo=timezone(timedelta(hours=2)))
        with session_scope(url) as session:
            session.add(ApiKey(name="t", prefix="qk_", key_hash="h", created_at=written.astimezone(UTC)))
            session.commit()
        with session_scope(url) as session:
            read = session.query(ApiKey).one().created_at
        assert read.tzinfo is not None and read.utcoffset() == timedelta(0) and read == written

