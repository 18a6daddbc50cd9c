"""Databases of their own on the machine's shared servers, for tests and benchmarks.

A run gets an empty Redis database that no parallel run can flush (an NX
claim key marks it taken) and a PostgreSQL database created for it and
dropped afterwards. The product never calls this; it lives in the package so
that tests/ and bench/ share one copy. psycopg is imported only when used.
"""

import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

CLAIM_KEY = "qkan-dev:claimed-by"
CLAIM_SECONDS = 3 * 3600  # outlives any test module or benchmark; a crashed run's claim expires by itself


@dataclass(frozen=True)
class Server:
    """A server on this machine that runs hand out databases of."""

    what: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.what} at {self.host}:{self.port}"

    def reachable(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False


SYSTEM_REDIS = Server("Redis", "127.0.0.1", 6379)
SYSTEM_POSTGRES = Server("PostgreSQL", "127.0.0.1", 5432)


class NoDatabase(RuntimeError):
    """The server is unreachable, or has no empty database to spare."""


@contextmanager
def claimed_redis_database(server: Server = SYSTEM_REDIS, databases: tuple[int, ...] = tuple(range(15, 0, -1))
                           ) -> Iterator[str]:
    """The URL of an empty database of ``server``, claimed for this run and flushed afterwards.

    Database 0 is left to whatever else uses the server. A database counts as
    free when the claim key set with NX is the only key in it, so two runs
    never share one, and a database holding someone else's keys is never
    touched.
    """
    if not server.reachable():
        raise NoDatabase(f"no {server}")
    token = uuid.uuid4().hex
    for db in databases:
        url = f"redis://{server.host}:{server.port}/{db}"
        client = redis.Redis.from_url(url)
        if client.set(CLAIM_KEY, token, nx=True, ex=CLAIM_SECONDS):
            if client.dbsize() == 1:
                break
            client.delete(CLAIM_KEY)
    else:
        raise NoDatabase(f"no empty database ({', '.join(map(str, databases))}) on the {server}")
    try:
        yield url
    finally:
        client.flushdb()


def postgres_admin_dsn(server: Server = SYSTEM_POSTGRES) -> str:
    """libpq connection string of the server's maintenance database (trust authentication, user postgres)."""
    return f"host={server.host} port={server.port} user=postgres dbname=postgres"


def libpq_dsn(database_url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://…``) as psycopg takes it."""
    from sqlalchemy.engine import make_url

    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def fresh_postgres_database(prefix: str = "qkan_test", server: Server = SYSTEM_POSTGRES) -> Iterator[str]:
    """The SQLAlchemy URL of a new PostgreSQL database, dropped afterwards (connections and all)."""
    import psycopg

    from qkan_orch.service.store.database import engine_for

    if not server.reachable():
        raise NoDatabase(f"no {server}")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_admin_dsn(server), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@{server.host}:{server.port}/{name}"
    finally:
        engine_for.cache_clear()  # this process's pools hold connections to it
        with psycopg.connect(postgres_admin_dsn(server), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
