"""The load benchmark's instruments: task events, SQL and publish meters, database and Redis counters, logs.

Each one watches the service from outside (Celery events, SQLAlchemy engine
events, server statistics), so measuring changes nothing in the path being
measured; so does the CPU meter, in ``load_cpu``.
"""

import contextlib
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.signals import after_task_publish, before_task_publish
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from qkan_orch.service.devstack import postgres_admin_dsn

JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
LOG_LINE = re.compile(r"Task ([\w.]+)\[([0-9a-f-]+)\] succeeded in ([0-9.e+-]+)s")


@dataclass
class TaskSeen:
    """What the task events said about one Celery task (epoch seconds, worker/API clocks = ours)."""

    name: str = ""
    job_id: str | None = None
    sent: float | None = None
    received: float | None = None
    done: float | None = None
    runtime: float | None = None
    ok: bool = True


class EventWatcher(threading.Thread):
    """Celery task events on a background thread: when each task was published, taken, finished.

    The bench has the API and the worker send these events (task-sent from
    the API's app, the worker's by an ``enable_events`` broadcast), for
    noops and jobs alike, and they give the baseline a "done" signal without
    a result backend.
    """

    def __init__(self, app: Celery) -> None:
        super().__init__(daemon=True, name="event-watcher")
        self.app = app
        self.cond = threading.Condition()
        self.tasks: dict[str, TaskSeen] = defaultdict(TaskSeen)
        self.by_job: dict[str, list[str]] = defaultdict(list)
        self.receiver: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.app.connection_for_read() as connection:
                self.receiver = self.app.events.Receiver(connection, handlers={"*": self._on_event})
                self.receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as exc:  # surfaced by the waits, which would otherwise hang
            self.error = exc
            with self.cond:
                self.cond.notify_all()

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.join(5)

    def _on_event(self, ev: dict[str, Any]) -> None:
        kind, task_id = ev.get("type", ""), ev.get("uuid")
        if not task_id or not kind.startswith("task-"):
            return
        with self.cond:
            seen = self.tasks[task_id]
            if ev.get("name"):
                seen.name = ev["name"]
            if seen.job_id is None and "args" in ev:
                match = JOB_ID.search(str(ev["args"]))
                if match:
                    seen.job_id = match.group(0)
                    self.by_job[seen.job_id].append(task_id)
            if kind == "task-sent":
                seen.sent = ev["timestamp"]
            elif kind == "task-received":
                seen.received = ev["timestamp"]
            elif kind in ("task-succeeded", "task-failed", "task-rejected", "task-revoked"):
                seen.done, seen.runtime, seen.ok = ev["timestamp"], ev.get("runtime"), kind == "task-succeeded"
                self.cond.notify_all()

    def wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Block until ``ready()`` (checked under the lock after every finished task)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not ready():
                if self.error is not None:
                    raise RuntimeError(f"the event receiver died: {self.error!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
                self.cond.wait(min(left, 1.0))

    def task_done(self, task_id: str) -> bool:
        seen = self.tasks.get(task_id)
        return seen is not None and seen.done is not None

    def job_tasks_done(self, job_id: str) -> bool:
        """At least one of the job's tasks finished and none of its known tasks is still running."""
        ids = self.by_job.get(job_id, [])
        return bool(ids) and all(self.tasks[t].done is not None for t in ids)

    def job_tasks(self, job_id: str) -> list[TaskSeen]:
        with self.cond:
            return [self.tasks[t] for t in self.by_job.get(job_id, [])]


@dataclass
class SqlCounts:
    """Statements (by verb and table) and commits seen on one engine while measuring."""

    statements: Counter = field(default_factory=Counter)
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    commits: int = 0
    commit_seconds: float = 0.0
    checkouts: int = 0
    publishes: list[float] = field(default_factory=list)

    def per(self, n: int) -> dict[str, Any]:
        """Everything divided by ``n`` jobs (ms for times)."""
        total = sum(self.seconds.values())
        return {
            "statements": sum(self.statements.values()) / n,
            "statement_ms": 1000 * total / n,
            "commits": self.commits / n,
            "commit_ms": 1000 * self.commit_seconds / n,
            "pool_checkouts": self.checkouts / n,
            "publishes": len(self.publishes) / n,
            "publish_ms": 1000 * sum(self.publishes) / n,
            "by_kind": {k: {"count": c / n, "ms": 1000 * self.seconds[k] / n}
                        for k, c in sorted(self.statements.items(), key=lambda kv: -kv[1])},
        }


class SqlMeter:
    """Statements, commits, pool checkouts and broker publishes of this process, metered from outside.

    LocalService runs the API on a thread of this process, and the profiled
    worker path runs here too, so SQLAlchemy engine events and Celery's
    publish signals see their database and broker work without any change to
    the service. Off unless inside ``measure()``.
    """

    def __init__(self, engine: Engine) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.counts: SqlCounts | None = None
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "commit", self._commit_start)
        event.listen(engine, "checkout", self._checkout)
        event.listen(Session, "after_commit", self._commit_end)
        before_task_publish.connect(self._publish_start, weak=False)
        after_task_publish.connect(self._publish_end, weak=False)

    @contextlib.contextmanager
    def measure(self) -> Iterator[SqlCounts]:
        counts = SqlCounts()
        self.counts = counts
        try:
            yield counts
        finally:
            self.counts = None

    @staticmethod
    def kind(statement: str) -> str:
        words = statement.split()
        verb = words[0].upper() if words else "?"
        match = re.search(r"\b(?:INTO|UPDATE|FROM)\s+\"?(\w+)", statement, re.IGNORECASE)
        return f"{verb} {match.group(1)}" if match else verb

    def _before(self, *_: Any) -> None:
        self.local.statement = time.perf_counter()

    def _after(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        start = getattr(self.local, "statement", None)
        counts = self.counts
        if counts is None or start is None:
            return
        key = self.kind(statement)
        with self.lock:
            counts.statements[key] += 1
            counts.seconds[key] += time.perf_counter() - start

    def _checkout(self, *_: Any) -> None:
        counts = self.counts
        if counts is not None:
            with self.lock:
                counts.checkouts += 1

    def _commit_start(self, *_: Any) -> None:
        self.local.commit = time.perf_counter()

    def _commit_end(self, *_: Any) -> None:
        start, self.local.commit = getattr(self.local, "commit", None), None
        counts = self.counts
        if counts is None or start is None:
            return
        with self.lock:
            counts.commits += 1
            counts.commit_seconds += time.perf_counter() - start

    def _publish_start(self, **_: Any) -> None:
        self.local.publish = time.perf_counter()

    def _publish_end(self, **_: Any) -> None:
        start, self.local.publish = getattr(self.local, "publish", None), None
        counts = self.counts
        if counts is not None and start is not None:
            with self.lock:
                counts.publishes.append(time.perf_counter() - start)


class PgStats:
    """Transaction and row counters of the bench database over every process (PostgreSQL only).

    Read from another database's connection so the reads do not count, and
    only once the counters have stopped moving for a while: PostgreSQL 15
    backends flush their counts at most once a second, and an idle one up to
    10 s later.
    """

    FIELDS = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted", "tup_fetched")

    def __init__(self, database_url: str) -> None:
        self.name = database_url.rsplit("/", 1)[1]

    def backends(self) -> list[int]:
        """Server process ids of the connections to the bench database (the API's and the worker's pools)."""
        import psycopg

        with psycopg.connect(postgres_admin_dsn(), autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)).fetchall()
        return [pid for (pid,) in rows]

    def read(self, settle: float = 11.0, limit: float = 60.0) -> dict[str, int]:
        """The counters once unchanged for ``settle`` s: an idle backend may hold its share back 10 s."""
        import psycopg

        previous: dict[str, int] = {}
        since = start = time.monotonic()
        while True:
            with psycopg.connect(postgres_admin_dsn(), autocommit=True) as conn:
                row = conn.execute(f"SELECT {', '.join(self.FIELDS)} FROM pg_stat_database WHERE datname = %s",
                                   (self.name,)).fetchone()
            now = dict(zip(self.FIELDS, row or (0,) * len(self.FIELDS), strict=True))
            if now != previous:
                previous, since = now, time.monotonic()
            elif time.monotonic() - since >= settle or time.monotonic() - start > limit:
                return now
            time.sleep(1.0)


def redis_calls(url: str) -> Counter:
    """Calls per Redis command so far (minus our own INFO)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items() if k != "cmdstat_info"})


def worker_log_durations(path: Path, task_ids: set[str]) -> list[float]:
    """Task run times from the worker log's ``succeeded in Xs`` lines, for the given task ids."""
    durations = []
    for line in path.read_text(errors="replace").splitlines():
        match = LOG_LINE.search(line)
        if match and match.group(2) in task_ids:
            durations.append(float(match.group(3)))
    return durations
