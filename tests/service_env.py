"""Real services for integration tests: system Redis / PostgreSQL when present, embedded otherwise.

On these machines Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432) run;
elsewhere those variants skip — unless QKAN_TEST_REQUIRE_SERVICES=1 (set by
.ci/run), which turns "unreachable" into a failure so CI cannot skip silently.
"""

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

SYSTEM_REDIS = ("127.0.0.1", 6379)
SYSTEM_POSTGRES = ("127.0.0.1", 5432)
TESTS = Path(__file__).resolve().parent

# Fast recovery for the tests: a dead worker's task comes back after 4 s, its lease after 2 s.
FAST = {
    "QKAN_LEASE_SECONDS": "2",
    "QKAN_BROKER_VISIBILITY_TIMEOUT": "4",
    "QKAN_POLL_INTERVAL": "0.3",
    "QKAN_RETRY_BACKOFF_SECONDS": "0.2",
    "QKAN_MAX_PAYLOAD_BYTES": str(2 * 2**20),
    "QKAN_BACKEND_PLUGINS": "support.plugin_backends",
    "QKAN_LOG_LEVEL": "INFO",
    "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
}


def reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def require(address: tuple[str, int], what: str) -> None:
    if reachable(address):
        return
    if os.environ.get("QKAN_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} at {address[0]}:{address[1]} is required here (QKAN_TEST_REQUIRE_SERVICES=1)")
    pytest.skip(f"no {what} at {address[0]}:{address[1]}")


@contextmanager
def system_redis_url() -> Iterator[str]:
    """A Redis database of its own on the system server, emptied before and after."""
    import redis

    require(SYSTEM_REDIS, "Redis")
    db = 10 + os.getpid() % 5
    url = f"redis://{SYSTEM_REDIS[0]}:{SYSTEM_REDIS[1]}/{db}"
    redis.Redis.from_url(url).flushdb()
    try:
        yield url
    finally:
        redis.Redis.from_url(url).flushdb()


@contextmanager
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    import psycopg

    require(SYSTEM_POSTGRES, "PostgreSQL")
    name = f"qkan_test_{uuid.uuid4().hex[:10]}"
    admin = f"host={SYSTEM_POSTGRES[0]} port={SYSTEM_POSTGRES[1]} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@{SYSTEM_POSTGRES[0]}:{SYSTEM_POSTGRES[1]}/{name}"
    finally:
        from qkan_orch.service.store.database import engine_for

        engine_for.cache_clear()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


STACKS = {
    "system-redis+postgresql": ("system", "postgresql"),
    "system-redis+sqlite": ("system", "sqlite"),
    "embedded-redis+sqlite": ("embedded", "sqlite"),
}


@contextmanager
def stack_env(stack: str, tmp: Path) -> Iterator[dict[str, str]]:
    """QKAN_* settings for one (broker, database) combination."""
    broker, database = STACKS[stack]
    env = dict(FAST)
    with _maybe(system_redis_url() if broker == "system" else None) as redis_url, \
            _maybe(postgres_url() if database == "postgresql" else None) as db_url:
        if redis_url:
            env["QKAN_REDIS_URL"] = redis_url
        env["QKAN_DATABASE_URL"] = db_url or f"sqlite:///{tmp / 'qkan.db'}"
        yield env


@contextmanager
def _maybe(manager):  # type: ignore[no-untyped-def]
    if manager is None:
        yield None
    else:
        with manager as value:
            yield value
