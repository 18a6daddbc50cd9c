"""Persistence: SQLAlchemy 2 tables, Alembic migrations and the queries the service needs."""
