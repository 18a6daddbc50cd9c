"""Real services for integration tests: system Redis / PostgreSQL when present, embedded otherwise.

On these machines Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432) run;
elsewhere those variants skip — unless QKAN_TEST_REQUIRE_SERVICES=1 (set by
.ci/run), which turns "unavailable" into a failure so CI cannot skip silently.
The databases themselves come from ``qkan_orch.service.devstack``.
"""

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

from qkan_orch.service.devstack import (
    SYSTEM_POSTGRES,
    SYSTEM_REDIS,
    NoDatabase,
    Server,
    claimed_redis_database,
    fresh_postgres_database,
)

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
    # tests poll and submit as fast as they can from one key and one address, and send bad keys on purpose;
    # test_key_limits tests the limits (keys of its own, its own failure count), here they would only get in
    # the way of unrelated tests
    "QKAN_RATE_LIMIT_PER_SECOND": "1000000",
    "QKAN_AUTH_FAILURES_PER_MINUTE": "1000000",
    "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
}


def unavailable(reason: str, required_by: str = "QKAN_TEST_REQUIRE_SERVICES") -> NoReturn:
    """Skip the test — or fail it where ``required_by``=1 (QKAN_TEST_REQUIRE_SERVICES, or the browser tests'
    QKAN_TEST_REQUIRE_BROWSER) says what is missing must be there."""
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{reason} ({required_by}=1: required here)")
    pytest.skip(reason)


def require(server: Server) -> None:
    if not server.reachable():
        unavailable(f"no {server}")


@contextmanager
def available(database: AbstractContextManager[str]) -> Iterator[str]:
    """The URL ``database`` hands out; the test skips (or fails, see ``unavailable``) if it has none."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(database)
        except NoDatabase as exc:
            unavailable(str(exc))
        yield url


def system_redis_url() -> AbstractContextManager[str]:
    """An empty Redis database of its own on the system server, claimed for the test and flushed afterwards."""
    return available(claimed_redis_database(SYSTEM_REDIS))


def postgres_url() -> AbstractContextManager[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    return available(fresh_postgres_database("qkan_test", SYSTEM_POSTGRES))


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
    with ExitStack() as resources:
        if broker == "system":
            env["QKAN_REDIS_URL"] = resources.enter_context(system_redis_url())
        if database == "postgresql":
            env["QKAN_DATABASE_URL"] = resources.enter_context(postgres_url())
        else:
            env["QKAN_DATABASE_URL"] = f"sqlite:///{tmp / 'qkan.db'}"
        yield env
