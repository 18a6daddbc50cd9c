"""The latency floor a durable job cannot go below: what one PostgreSQL commit costs on this machine.

A job's row is committed before the API answers 202, and the worker commits
its claim (the lease) before it computes; ``finished_at`` is stamped before
the last commit. So two durable commits (each a WAL flush, ``fdatasync`` by
default) lie between the client's POST and ``finished_at``, one after the
other. Measured here on the bench's own database, in the same run as the bare
Celery round trip they are compared with.
"""

import statistics
import time
import uuid
from dataclasses import dataclass

import psycopg

from qkan_orch.service.devstack import libpq_dsn

COMMITS_BEFORE_FINISHED = 2  # the job's INSERT (before the 202) and the worker's claim (before it computes)


@dataclass(frozen=True)
class CommitCost:
    """p50 wall times (s) of a bare round trip and of an INSERT + durable COMMIT, and the server's WAL settings."""

    round_trip: float
    durable_commit: float
    synchronous_commit: str
    wal_sync_method: str


def commit_cost(database_url: str, n: int = 300) -> CommitCost:
    """``SELECT 1`` and a one-row INSERT + COMMIT, ``n`` times each, on a scratch table dropped afterwards."""
    dsn = libpq_dsn(database_url)
    table = f"bench_commit_probe_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn) as conn:
        sync = str(conn.execute("SHOW synchronous_commit").fetchone()[0])  # type: ignore[index]
        method = str(conn.execute("SHOW wal_sync_method").fetchone()[0])  # type: ignore[index]
        conn.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, payload bytea)")
        conn.commit()
        try:
            trips, commits = [], []
            for _ in range(n):
                start = time.perf_counter()
                conn.execute("SELECT 1").fetchone()
                trips.append(time.perf_counter() - start)
                conn.commit()  # ends the read-only transaction: nothing to flush
                start = time.perf_counter()
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", (uuid.uuid4().hex, b"x" * 300))
                conn.commit()
                commits.append(time.perf_counter() - start)
        finally:
            conn.execute(f"DROP TABLE {table}")
            conn.commit()
    return CommitCost(statistics.median(trips), statistics.median(commits), sync, method)
