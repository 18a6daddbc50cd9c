"""Engines, sessions and migrations for SQLite (default) and PostgreSQL.

SQLite is opened in WAL mode with a busy timeout so the API and worker
processes can write the same file; PostgreSQL migrations take an advisory
lock so several processes starting at once upgrade the schema exactly once.
While the database is away, every use of a session raises OperationalError
within ``CONNECT_TIMEOUT`` (the API answers 503, the workers retry); the pool
reconnects by itself once it is back.

A pooled PostgreSQL connection is pinged before use only if it sat idle for
``PING_AFTER_IDLE`` seconds: a ping is a round trip, and under load a
connection comes back within milliseconds (bench/results/service_load.md).
A server restarted in that second fails the first statement on such a
connection instead of the ping: the same OperationalError, and the same 503
or retry, as a restart in the middle of a transaction; SQLAlchemy then drops
every connection of the pool, so the next use reconnects.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
_ADVISORY_LOCK = 0x51CA4  # any constant shared by all our processes
CONNECT_TIMEOUT = 5  # seconds: the API answers 503 database_unavailable after at most this long
PING_AFTER_IDLE = 1.0  # seconds a pooled connection may sit unused before it is pinged at checkout
# execution options of a connection whose statement commits by itself: no BEGIN and COMMIT round trips around it
ONE_STATEMENT = {"isolation_level": "AUTOCOMMIT"}


@cache
def engine_for(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    # a server that does not answer at all fails a connection within CONNECT_TIMEOUT rather than the kernel's minutes
    connect_args = {"connect_timeout": CONNECT_TIMEOUT} if parsed.get_backend_name() == "postgresql" else {}
    engine = create_engine(url, pool_size=5, max_overflow=10, connect_args=connect_args)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """Ping a connection at checkout if it was idle ``PING_AFTER_IDLE`` seconds, and replace it if the server
    dropped it (a restart); a connection used a moment ago, or never returned yet (just made), goes out as it
    is (see the module's docstring)."""

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection, record) -> None:  # type: ignore[no-untyped-def]
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection, record, _proxy) -> None:  # type: ignore[no-untyped-def]
        returned_at = record.info.get("returned_at")
        if returned_at is None or time.monotonic() - returned_at < PING_AFTER_IDLE:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"the pooled connection is gone ({type(exc).__name__})") from exc


@cache
def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def upgrade(url: str) -> None:
    """Bring the schema to the latest migration (idempotent, safe to race)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = engine_for(url)
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def ping(url: str) -> None:
    with engine_for(url).connect() as connection:
        connection.execute(text("SELECT 1"))
