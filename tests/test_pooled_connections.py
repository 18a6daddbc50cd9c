"""The PostgreSQL pool's skipped pings keep their promise (``service/store/database.py``).

A connection idle for ``PING_AFTER_IDLE`` is pinged and replaced if the server dropped it; one used a moment
ago goes out unpinged, so a drop shows as one failed statement, after which the pool reconnects.
"""

import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from qkan_orch.service.devstack import libpq_dsn
from qkan_orch.service.store.database import PING_AFTER_IDLE, engine_for, upgrade
from service_env import postgres_url


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with postgres_url() as database:
        upgrade(database)
        yield database


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _restart(url: str) -> None:
    """What a server restart does to the pool: every other connection to the database ends."""
    with psycopg.connect(libpq_dsn(url), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture
def engine(url: str) -> Engine:
    """The service's engine for the database, its pool emptied: one connection, made by the test."""
    engine = engine_for(url)
    engine.dispose()
    return engine


def test_a_connection_idle_for_a_while_is_pinged_and_replaced_when_the_server_dropped_it(
        url: str, engine: Engine) -> None:
    dropped = _backend_pid(engine)
    _restart(url)
    time.sleep(PING_AFTER_IDLE + 0.2)
    assert _backend_pid(engine) != dropped  # no error reached the caller


def test_a_connection_used_a_moment_ago_is_not_pinged_so_a_drop_fails_one_statement(
        url: str, engine: Engine) -> None:
    _backend_pid(engine)
    _restart(url)
    with pytest.raises(OperationalError), engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    assert _backend_pid(engine) > 0  # the failure dropped the pool: the next use reconnects
