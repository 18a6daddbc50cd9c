"""The migrations build exactly the schema the tables declare, on SQLite and PostgreSQL (Alembic's own diff)."""

from contextlib import nullcontext
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from qkan_orch.service.store.database import engine_for, upgrade
from qkan_orch.service.store.tables import Base
from service_env import postgres_url


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_upgraded_database_matches_the_declared_tables(database: str, tmp_path: Path) -> None:
    with postgres_url() if database == "postgresql" else nullcontext(f"sqlite:///{tmp_path / 'm.db'}") as url:
        upgrade(url)
        with engine_for(url).connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
