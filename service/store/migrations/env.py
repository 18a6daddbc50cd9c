"""Alembic environment: runs on the connection ``database.upgrade`` hands over."""

from alembic import context

from qkan_orch.service.store.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - we always pass a connection
    raise RuntimeError("run migrations through qkan_orch.service.store.database.upgrade()")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
