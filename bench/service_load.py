"""Load benchmark: jobs through the whole service against a bare Celery round trip on the same worker.

The issue's goals: the service sustains ≥ 100 jobs/s, and a job's latency is
at most 3× a bare Celery round trip. One run measures both sides against the
same Redis, with the same worker process:

1. Baseline — ``qkan.noop`` (a task that does nothing, registered by
   ``workers.tasks``) published to the ``local`` queue and run by the
   service's own ``qkan-orch worker`` (prefork, ``--concurrency`` processes,
   acks_late, prefetch 1: every setting identical to what jobs get).
   The app has no result backend (``task_ignore_result=True``), so instead of
   adding one — which would add a result write the service path never does —
   "done" is read from the Celery task events the worker already sends
   (``worker_send_task_events=True``): the ``task-succeeded`` event's
   ``timestamp`` is stamped by the worker when the task has returned. Round
   trip = that timestamp − the client's clock just before ``send_task``
   (same machine, same clock). Measured sequentially (one in flight, N times)
   and with all ``--jobs`` published at once from ``--threads`` threads.
2. Service — LocalService (API on a uvicorn thread of this process, the
   worker above), one API key, one tiny model (width [2, 2, 1], reps 1), and
   jobs of 2 samples on the ``exact`` backend submitted through the Python
   ``Client``: sequentially (N times) and all ``--jobs`` at once from
   ``--threads`` threads. Latency = the job's ``finished_at`` (stamped by the
   worker, read back from the API) − the client's clock just before the POST.
   ``finished_at`` is stamped just before the job's last commit, a few ms
   before its task returns (the timeline shows that gap), so this flatters
   the service slightly against the baseline's "task returned".
   Throughput = jobs / (last finished − first submitted); the baseline's
   throughput is defined the same way.

The latency goal is judged like for like — unloaded service against unloaded
bare round trip, and 500-in-flight against 500-in-flight — because under
load both p50s are mostly queueing, which is what the throughput goal covers.
The table also shows the loaded service against the unloaded round trip, for
reference only.

Where the time goes (printed after the results):

* CPU ms per job by process (API, client threads, event receiver, worker,
  Redis, PostgreSQL backends, everything else on the machine, idle), from
  /proc — with the ceiling that CPU cost puts on the rate, and a warning
  when other processes took a large share of the cores during a phase;
* per-job timeline from timestamps on one clock: client POST → ``created_at``
  (row inserted) → ``task-sent`` event (API published) → POST returns;
  ``task-received`` (worker took the message) → ``started_at`` (job claimed,
  marked running) → ``finished_at`` → ``task-succeeded`` (lease released,
  task returned);
* the API's database work per submission, counted with SQLAlchemy engine
  events on the engine this process's API thread uses (statements by kind,
  their time, commits), and its broker publish time (Celery publish signals);
* worker task durations from the worker log (``succeeded in Xs``);
* PostgreSQL only: commits and row writes per job over both processes
  (``pg_stat_database``), so the worker's share follows by difference
  (pool pre-pings run in autocommit, so each checkout is a commit too);
* embedded Redis only: Redis commands per task (``INFO commandstats``; the
  system Redis is shared with other users, so its counters would lie);
* the worker path in this process: the worker is stopped, jobs are submitted,
  and ``advance_job`` runs here — once with the SQL meter, once under cProfile.

Caveats, printed in the header too: the API shares this process (and its GIL)
with the 16 client threads and the event receiver, as it does in
LocalService everywhere; on a shared 2-core machine other work moves the
numbers, so read the "other processes on the machine" row before
comparing runs.

Not a test and not run by CI. Run it with::

    .venv/bin/python bench/service_load.py                    # system Redis DB 9 + fresh PostgreSQL database
    .venv/bin/python bench/service_load.py --stack embedded   # embedded Redis + SQLite
    .venv/bin/python bench/service_load.py --help

A readable report goes to stdout, followed by one JSON line with every number;
progress notes go to stderr.
"""

import argparse
import contextlib
import cProfile
import json
import os
import platform
import pstats
import re
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import celery
import numpy as np
import redis
from celery import Celery
from celery.signals import after_task_publish, before_task_publish
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from qkan_orch.client import Client
from qkan_orch.models import build_model, parse_spec, save_model
from qkan_orch.service.embedded import stop_process
from qkan_orch.service.local import LocalService
from qkan_orch.service.store.database import engine_for
from qkan_orch.workers.app import celery_app
from qkan_orch.workers.execution import advance_job

SYSTEM_REDIS = ("127.0.0.1", 6379)
SYSTEM_POSTGRES = ("127.0.0.1", 5432)
STACKS = ("postgresql", "sqlite-system", "embedded")
THROUGHPUT_GOAL = 100.0  # jobs/s
LATENCY_GOAL = 3.0  # service p50 / bare round-trip p50
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
LOG_LINE = re.compile(r"Task (qkan\.\w+)\[([0-9a-f-]+)\] succeeded in ([0-9.e+-]+)s")
REPO = Path(__file__).resolve().parent.parent


# -- set-up ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are the issue's reference load."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs (and noops) in flight at once (default: 500)")
    parser.add_argument("--stack", choices=STACKS, default="postgresql",
                        help="postgresql: system Redis + fresh PostgreSQL database (default); sqlite-system: "
                             "system Redis + SQLite; embedded: embedded Redis + SQLite")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes, prefork (default: 2)")
    parser.add_argument("--threads", type=int, default=16, help="client threads submitting at once (default: 16)")
    parser.add_argument("--sequential", type=int, default=200,
                        help="one-at-a-time round trips of each kind, for unloaded latency (default: 200)")
    parser.add_argument("--samples", type=int, default=2, help="input rows per job (default: 2)")
    parser.add_argument("--redis-db", type=int, default=9,
                        help="database number on the system Redis; must be empty (default: 9)")
    parser.add_argument("--profile-jobs", type=int, default=50,
                        help="jobs run in this process per worker-path profile pass, 0 skips it (default: 50)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on a phase after this many s")
    args = parser.parse_args(argv)
    for name in ("jobs", "concurrency", "threads", "sequential", "samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def log(message: str) -> None:
    """Progress note on stderr, so stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


def reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def private_redis_db(db: int) -> Iterator[str]:
    """A database of the system Redis, refused if someone else's keys are in it, emptied afterwards."""
    if not reachable(SYSTEM_REDIS):
        raise SystemExit(f"no Redis at {SYSTEM_REDIS[0]}:{SYSTEM_REDIS[1]} (use --stack embedded)")
    url = f"redis://{SYSTEM_REDIS[0]}:{SYSTEM_REDIS[1]}/{db}"
    client = redis.Redis.from_url(url)
    if client.dbsize():
        raise SystemExit(f"Redis database {db} is not empty; pick a free one with --redis-db")
    try:
        yield url
    finally:
        client.flushdb()


@contextlib.contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new PostgreSQL database for this run, dropped afterwards (as tests/service_env.py does)."""
    import psycopg

    if not reachable(SYSTEM_POSTGRES):
        raise SystemExit(f"no PostgreSQL at {SYSTEM_POSTGRES[0]}:{SYSTEM_POSTGRES[1]} (use --stack embedded)")
    name = f"qkan_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@{SYSTEM_POSTGRES[0]}:{SYSTEM_POSTGRES[1]}/{name}"
    finally:
        engine_for.cache_clear()
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def admin_dsn() -> str:
    return f"host={SYSTEM_POSTGRES[0]} port={SYSTEM_POSTGRES[1]} user=postgres dbname=postgres"


@contextlib.contextmanager
def stack_env(stack: str, folder: Path, redis_db: int) -> Iterator[dict[str, str]]:
    """QKAN_* settings for ``--stack``; service defaults otherwise (no test-speed tweaks)."""
    env = {"QKAN_LOG_LEVEL": "INFO"}  # the worker log's "succeeded in" lines are part of the profile
    with contextlib.ExitStack() as stack_:
        if stack != "embedded":
            env["QKAN_REDIS_URL"] = stack_.enter_context(private_redis_db(redis_db))
        if stack == "postgresql":
            env["QKAN_DATABASE_URL"] = stack_.enter_context(fresh_postgres())
        else:
            env["QKAN_DATABASE_URL"] = f"sqlite:///{folder / 'qkan.db'}"
        yield env


def tiny_model(folder: Path) -> Path:
    """The load test's model: width [2, 2, 1], reps 1, float32 — two exact rounds per job."""
    path = folder / "tiny.safetensors"
    save_model(build_model(parse_spec({"width": [2, 2, 1], "reps": 1}), seed=0).float(), str(path))
    return path


# -- measuring instruments -------------------------------------------------------------------------


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

    The API and the worker already send these events (task_send_sent_event,
    worker_send_task_events), so watching them changes nothing in the path
    being measured, and it gives the baseline a "done" signal without a
    result backend.
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

        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,)).fetchall()
        return [pid for (pid,) in rows]

    def read(self, settle: float = 11.0, limit: float = 60.0) -> dict[str, int]:
        """The counters once unchanged for ``settle`` s: an idle backend may hold its share back 10 s."""
        import psycopg

        previous: dict[str, int] = {}
        since = start = time.monotonic()
        while True:
            with psycopg.connect(admin_dsn(), autocommit=True) as conn:
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


def proc_cpu(path: str) -> float:
    """CPU seconds (user + system) of a process or thread from its /proc stat file; 0 once it is gone."""
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the worker's prefork children)."""
    parents: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(fields[1])].append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


class CpuMeter:
    """CPU seconds per role over a phase, from /proc: who burns the 2 cores a job needs.

    The bench process holds the API, the client threads and the event
    receiver; the clients' share is summed by the client calls themselves
    (``time.thread_time``) and the receiver's read from its thread's stat, so
    the API's share follows by difference. Worker = the ``qkan-orch worker``
    process and its prefork children; Redis = the server's process (the
    system one also serves others, but little while a phase runs); this
    run's PostgreSQL backends. Whatever else the machine's cores did in the
    phase is "other processes": on a shared machine that is the first thing
    to check before believing a throughput.
    """

    def __init__(self, service: LocalService, watcher: threading.Thread, pg: PgStats | None) -> None:
        self.service, self.watcher, self.pg = service, watcher, pg
        self.client_seconds = 0.0
        self.lock = threading.Lock()
        info = redis.Redis.from_url(service.settings.redis_url or "").info("server")
        self.redis_pid = int(info["process_id"])
        self.redis_label = "redis-server (embedded)" if service.redis is not None else "redis-server (system)"

    def add_client(self, seconds: float) -> None:
        with self.lock:
            self.client_seconds += seconds

    def snapshot(self) -> dict[str, float]:
        snap = {
            "wall": time.monotonic(),
            "machine": machine_busy(),
            "bench process": proc_cpu("/proc/self/stat"),
            "client calls": self.client_seconds,
            "event receiver": proc_cpu(f"/proc/self/task/{self.watcher.native_id}/stat"),
            "worker processes": sum(proc_cpu(f"/proc/{pid}/stat")
                                    for worker in self.service.workers for pid in descendants(worker.pid)),
        }
        snap["redis-server"] = proc_cpu(f"/proc/{self.redis_pid}/stat")
        if self.pg is not None:
            snap.update({f"pg:{pid}": proc_cpu(f"/proc/{pid}/stat") for pid in self.pg.backends()})
        return snap

    def per_item(self, before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
        """ms of CPU per job/noop by role; the API is the bench process minus clients and receiver."""
        delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        out = {
            "API (bench process − clients − receiver)":
                delta["bench process"] - delta["client calls"] - delta["event receiver"],
            "client calls": delta["client calls"],
            "event receiver": delta["event receiver"],
            "worker processes": delta["worker processes"],
            self.redis_label: delta["redis-server"],
        }
        pg = [v for k, v in delta.items() if k.startswith("pg:")]
        if pg:
            out["PostgreSQL backends"] = sum(pg)
        ours = sum(out.values())
        out["all of the above"] = ours
        out["other processes on the machine"] = delta["machine"] - ours
        out["idle"] = (os.cpu_count() or 1) * delta["wall"] - delta["machine"]
        return {k: 1000 * v / n for k, v in out.items()}


def worker_log_durations(path: Path, task_ids: set[str]) -> list[float]:
    """Task run times from the worker log's ``succeeded in Xs`` lines, for the given task ids."""
    durations = []
    for line in path.read_text(errors="replace").splitlines():
        match = LOG_LINE.search(line)
        if match and match.group(2) in task_ids:
            durations.append(float(match.group(3)))
    return durations


# -- statistics ------------------------------------------------------------------------------------


def stats(values: list[float]) -> dict[str, float | int | None]:
    """n, p50, p99, mean, max (seconds in, seconds out); None where there is nothing to summarise."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "mean": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {"n": len(values), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)),
            "mean": float(a.mean()), "max": float(a.max())}


def ms(value: float | None, width: int = 8) -> str:
    return f"{'—':>{width}}" if value is None else f"{1000 * value:{width}.1f}"


def epoch(stamp: str | None) -> float | None:
    """An API timestamp as epoch seconds; SQLite returns them without a zone, and they are UTC."""
    if stamp is None:
        return None
    value = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


@dataclass
class Phase:
    """One measured phase: per-item start (client clock) and done (worker clock) times."""

    label: str
    starts: list[float]
    dones: list[float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def latencies(self) -> list[float]:
        return [d - s for s, d in zip(self.starts, self.dones, strict=True)]

    @property
    def rate(self) -> float:
        return len(self.dones) / (max(self.dones) - min(self.starts))

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "latency_s": stats(self.latencies), "per_second": self.rate, **self.extra}


# -- baseline --------------------------------------------------------------------------------------


def publish_noop(app: Celery, cpu: CpuMeter | None = None) -> tuple[str, float]:
    start, cpu_start = time.time(), time.thread_time()
    task_id = app.send_task("qkan.noop", queue="local").id
    if cpu is not None:
        cpu.add_client(time.thread_time() - cpu_start)
    return task_id, start


def warm_up_noops(app: Celery, watcher: EventWatcher, timeout: float) -> None:
    """Until the worker is up and the receiver subscribed, then a few more so both processes have run."""
    deadline = time.monotonic() + timeout
    while True:
        task_id, _ = publish_noop(app)
        try:
            watcher.wait(lambda task_id=task_id: watcher.task_done(task_id), 2.0, "warm-up noop")
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
    ids = [publish_noop(app)[0] for _ in range(20)]
    watcher.wait(lambda: all(watcher.task_done(t) for t in ids), timeout, "warm-up noops")


def baseline_sequential(app: Celery, watcher: EventWatcher, cpu: CpuMeter, n: int, timeout: float) -> Phase:
    starts, dones, ids = [], [], []
    for _ in range(n):
        task_id, start = publish_noop(app, cpu)
        watcher.wait(lambda task_id=task_id: watcher.task_done(task_id), timeout, "noop")
        starts.append(start)
        dones.append(watcher.tasks[task_id].done)  # type: ignore[arg-type]
        ids.append(task_id)
    return Phase("bare celery, one at a time", starts, dones, {"task_ids": ids})


def baseline_concurrent(app: Celery, watcher: EventWatcher, cpu: CpuMeter, n: int, threads: int,
                        timeout: float) -> Phase:
    with ThreadPoolExecutor(threads) as pool:
        sent = list(pool.map(lambda _: publish_noop(app, cpu), range(n)))
    watcher.wait(lambda: all(watcher.task_done(t) for t, _ in sent), timeout, f"{n} noops")
    failed = sum(not watcher.tasks[t].ok for t, _ in sent)
    return Phase(f"bare celery, {n} at once", [s for _, s in sent], [watcher.tasks[t].done for t, _ in sent],  # type: ignore[misc]
                 {"failed": failed, "task_ids": [t for t, _ in sent]})


# -- service ---------------------------------------------------------------------------------------


@dataclass
class Submitted:
    """One job as the client saw it."""

    job_id: str
    start: float
    returned: float


def submit(qc: Client, model_id: str, inputs: np.ndarray, cpu: CpuMeter | None = None) -> Submitted:
    start, cpu_start = time.time(), time.thread_time()
    job_id = qc.submit(model_id, inputs, backend="exact")["id"]
    returned = time.time()
    if cpu is not None:
        cpu.add_client(time.thread_time() - cpu_start)
    return Submitted(job_id, start, returned)


def wait_jobs(qc: Client, watcher: EventWatcher, ids: list[str], timeout: float) -> dict[str, dict]:
    """Until every job is terminal: events first (no polling load), then the API's word for it."""
    watcher.wait(lambda: all(watcher.job_tasks_done(j) for j in ids), timeout, f"{len(ids)} jobs")
    deadline = time.monotonic() + timeout
    wanted = set(ids)
    while True:  # a job that needed a second step is not done when its first task is
        found = all_jobs(qc)
        pending = [j for j in wanted if found.get(j, {}).get("state") not in ("succeeded", "failed", "cancelled")]
        if not pending:
            return {j: found[j] for j in ids}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(ids)} jobs still not finished")
        time.sleep(0.5)


def all_jobs(qc: Client) -> dict[str, dict]:
    jobs: dict[str, dict] = {}
    offset = 0
    while True:
        page = qc.jobs(limit=500, offset=offset)
        jobs.update({j["id"]: j for j in page["items"]})
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return jobs


def service_phase(label: str, subs: list[Submitted], status: dict[str, dict], watcher: EventWatcher) -> Phase:
    """Latencies from ``finished_at``, plus every timestamp of the per-job timeline."""
    segments: dict[str, list[float]] = defaultdict(list)
    failed = 0
    for sub in subs:
        job = status[sub.job_id]
        failed += job["state"] != "succeeded"
        created, started, finished = (epoch(job[k]) for k in ("created_at", "started_at", "finished_at"))
        tasks = watcher.job_tasks(sub.job_id)
        first = tasks[0] if tasks else TaskSeen()
        last_done = max((t.done for t in tasks if t.done is not None), default=None)
        marks = {
            "POST → row inserted (created_at)": (sub.start, created),
            "row inserted → published (task-sent)": (created, first.sent),
            "published → POST returned": (first.sent, sub.returned),
            "POST round trip (client)": (sub.start, sub.returned),
            "published → worker took it (task-received)": (first.sent, first.received),
            "worker took it → running (started_at)": (first.received, started),
            "running → finished_at": (started, finished),
            "finished_at → task returned (task-succeeded)": (finished, last_done),
        }
        for name, (a, b) in marks.items():
            if a is not None and b is not None:
                segments[name].append(b - a)
        segments["tasks per job"].append(len(tasks))
        segments["exact rounds, backend seconds"].append(sum(r["seconds"] or 0.0 for r in job["rounds"]))
    dones = [epoch(status[s.job_id]["finished_at"]) or float("nan") for s in subs]
    return Phase(label, [s.start for s in subs], dones, {"failed": failed, "segments": segments})


def profile_worker_path(service: LocalService, qc: Client, meter: SqlMeter, model_id: str,
                        inputs: list[np.ndarray], jobs: int) -> dict[str, Any]:
    """Run ``advance_job`` in this process on fresh jobs: once metered, once under cProfile.

    The worker is stopped first, so the jobs' messages stay in Redis and the
    only code touching them is the call timed here (no queueing, no
    contention: the unloaded cost of the worker side of one job).
    """
    for process in service.workers:
        stop_process(process)
    settings = service.settings
    ids = [qc.submit(model_id, inputs[k % len(inputs)], backend="exact")["id"] for k in range(2 + 2 * jobs)]
    for job_id in ids[:2]:  # the model cache and the backend import are per process: not per job
        advance_job(job_id, settings)
    walls = []
    with meter.measure() as counts:
        for job_id in ids[2:2 + jobs]:
            start = time.perf_counter()
            step = advance_job(job_id, settings)
            walls.append(time.perf_counter() - start)
            if step.again_in is not None:
                log(f"  (job {job_id} wants another step in {step.again_in} s)")
    profiler = cProfile.Profile()
    profiler.enable()
    for job_id in ids[2 + jobs:]:
        advance_job(job_id, settings)
    profiler.disable()
    wanted = set(ids)
    states = Counter(j["state"] for j in all_jobs(qc).values() if j["id"] in wanted)
    return {"jobs": jobs, "wall_s": stats(walls), "sql": counts.per(jobs), "states": dict(states),
            "cprofile": top_functions(profiler, jobs)}


def top_functions(profiler: cProfile.Profile, jobs: int, limit: int = 14) -> dict[str, Any]:
    """Self time per job by package (where the CPU goes), and this repo's functions by cumulative time."""
    raw: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    by_package: dict[str, float] = defaultdict(float)
    ours = []
    for (filename, line, name), (_cc, calls, own, cumulative, _callers) in raw.items():
        by_package[package_of(filename, name)] += 1000 * own / jobs
        if filename.startswith(str(REPO)) and ".venv" not in filename:
            ours.append({"function": f"{os.path.relpath(filename, REPO)}:{line}({name})",
                         "ms_per_job": 1000 * cumulative / jobs, "calls_per_job": calls / jobs})
    ours.sort(key=lambda r: -r["ms_per_job"])
    packages = dict(sorted(by_package.items(), key=lambda kv: -kv[1]))
    return {"self_ms_by_package": packages, "repo_functions": ours[:limit]}


def package_of(filename: str, name: str) -> str:
    """Which package a profiled function belongs to: site-packages' top folder, our top folder, or stdlib."""
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if filename.startswith(str(REPO)):
        return "ours: " + os.path.relpath(filename, REPO).split("/", 1)[0]
    if filename == "~":  # a C function: name it by the type it is a method of
        match = re.search(r"of '([\w.]+)", name)
        return f"C: {match.group(1).split('.')[0]}" if match else "C: builtins"
    return "stdlib"


# -- report ----------------------------------------------------------------------------------------


def print_report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The readable part: results, goals, then where the time goes."""
    out: list[str] = []
    head = result["header"]
    out.append(f"QKAN service load — stack {args.stack}, worker concurrency {args.concurrency} (prefork), "
               f"{args.jobs} jobs at once from {args.threads} client threads, {args.samples} samples/job, "
               f"backend exact")
    out.append(f"host: {head['cpus']} CPUs, load average before {head['loadavg_before']}, after "
               f"{head['loadavg_after']}; python {head['python']}, celery {head['celery']}; shared machine — "
               f"other processes move these numbers")
    out.append("the API runs on a thread of this process, sharing its GIL with the client threads and the "
               "event receiver (as LocalService always does)")
    out.append("")
    out.append(f"{'':42}{'n':>5}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'per s':>9}")
    for key in ("bare_sequential", "bare_concurrent", "service_sequential", "service_concurrent"):
        phase = result[key]
        lat = phase["latency_s"]
        rate = f"{phase['per_second']:9.1f}" if "concurrent" in key else f"{'':9}"
        out.append(f"{phase['label']:42}{lat['n']:5d}{ms(lat['p50'], 9)}{ms(lat['p99'], 9)}{ms(lat['max'], 9)}{rate}")
    out.append("latency = done − client clock before publish/POST; done = task-succeeded event (bare) or the "
               "job's finished_at (service)")
    failed = result["service_concurrent"]["failed"] + result["service_sequential"]["failed"]
    if failed or result["bare_concurrent"]["failed"]:
        out.append(f"FAILURES: {failed} jobs, {result['bare_concurrent']['failed']} noops did not succeed")
    out.append("")
    out.append("goals")
    for goal in result["goals"]:
        verdict = "—" if goal["met"] is None else ("MET" if goal["met"] else "NOT MET")
        out.append(f"  {goal['goal']:54}{goal['value']:>22}   {verdict}")
    out.append("")
    out.append("where a job's time goes (p50 / p99 ms; server stamps and events, one clock)")
    out.append(f"{'':48}{'one at a time':>20}{'all at once':>20}")
    seq, conc = result["service_sequential"]["segments"], result["service_concurrent"]["segments"]
    for name in conc:
        if name == "tasks per job":
            continue
        a, b = seq.get(name, {}), conc[name]
        out.append(f"  {name:46}{ms(a.get('p50'), 9)} /{ms(a.get('p99'), 8)}{ms(b['p50'], 10)} /{ms(b['p99'], 8)}")
    out.append(f"  {'Celery tasks per job (mean)':46}{seq['tasks per job']['mean']:18.2f}"
               f"{conc['tasks per job']['mean']:20.2f}")
    out.append("")
    cpu = result["cpu_ms_per_item"]
    roles = list(dict.fromkeys(role for phase in cpu.values() for role in phase))
    out.append(f"CPU ms per noop / job, from /proc ({head['cpus']} cores = {head['cpus']}000 ms per second of wall "
               f"time; /proc ticks are 10 ms, so one-at-a-time rows are coarse)")
    width = max(len(name) for name in cpu) + 2
    out.append(f"  {'':42}" + "".join(f"{name:>{width}}" for name in cpu))
    for role in roles:
        out.append(f"  {role:42}" + "".join(
            f"{phase[role]:{width}.2f}" if role in phase else f"{'—':>{width}}" for phase in cpu.values()))
    for name, phase in cpu.items():
        if "at once" in name:
            ceiling = head["cpus"] * 1000 / phase["all of the above"]
            out.append(f"  {name}: the CPU alone caps this at {ceiling:.0f}/s on {head['cpus']} cores "
                       f"(if nothing else ran and every core were busy)")
            if phase["other processes on the machine"] > 0.25 * phase["all of the above"]:
                share = phase["other processes on the machine"] / phase["all of the above"]
                out.append(f"  WARNING: other processes used {share:.0%} as much CPU as this run during '{name}': "
                           f"its rate is lower than this machine can do alone")
    out.append("")
    out.append("worker log, 'succeeded in Xs' (ms)   n      p50      p99     mean")
    for name, values in result["worker_log"].items():
        out.append(f"  {name:32}{values['n']:5d}{ms(values['p50'], 9)}{ms(values['p99'], 9)}{ms(values['mean'], 9)}")
    out.append("")
    for key, label in (("api_sql_sequential", "one at a time"), ("api_sql_concurrent", "all at once")):
        api = result[key]
        out.append(f"API process per submission ({label}): {api['statements']:.1f} SQL statements "
                   f"{api['statement_ms']:.2f} ms, {api['commits']:.1f} commits {api['commit_ms']:.2f} ms, "
                   f"{api['pool_checkouts']:.1f} pool checkouts, {api['publishes']:.1f} broker publish "
                   f"{api['publish_ms']:.2f} ms")
    out.append("  statements per submission: " + ", ".join(
        f"{k} ×{v['count']:.1f}" for k, v in result["api_sql_concurrent"]["by_kind"].items()))
    if result.get("pg_per_job"):
        pg = result["pg_per_job"]
        out.append(f"PostgreSQL per job, API + worker ({args.jobs} at once): "
                   + ", ".join(f"{k} {v:.2f}" for k, v in pg.items()))
    if result.get("redis_per_task"):
        rd = result["redis_per_task"]
        out.append(f"embedded Redis commands per noop {rd['noop']['total']:.1f}, per job {rd['job']['total']:.1f}")
        out.append("  per job: " + ", ".join(f"{k} {v:.1f}" for k, v in rd["job"]["by_command"].items() if v >= 0.05))
    prof = result.get("worker_profile")
    if prof:
        sql = prof["sql"]
        out.append("")
        out.append(f"worker path in this process (advance_job, {prof['jobs']} jobs, no queueing): "
                   f"p50 {ms(prof['wall_s']['p50'], 0)} ms, mean {ms(prof['wall_s']['mean'], 0)} ms per job; "
                   f"{sql['statements']:.1f} SQL statements {sql['statement_ms']:.2f} ms, "
                   f"{sql['commits']:.1f} commits {sql['commit_ms']:.2f} ms, {sql['pool_checkouts']:.1f} pool "
                   f"checkouts; end states {prof['states']}")
        out.append("  statements per job: " + ", ".join(
            f"{k} ×{v['count']:.1f} ({v['ms']:.2f} ms)" for k, v in sql["by_kind"].items()))
        out.append("  cProfile (slows Python-heavy code ~2×), self ms per job by package: " + ", ".join(
            f"{k} {v:.2f}" for k, v in prof["cprofile"]["self_ms_by_package"].items() if v >= 0.05))
        out.append("  cProfile, this repo's functions, cumulative ms per job:")
        for row in prof["cprofile"]["repo_functions"]:
            out.append(f"    {row['ms_per_job']:8.2f} ms {row['calls_per_job']:7.1f} calls  {row['function']}")
    print("\n".join(out))


def goals(bare_seq: Phase, bare_conc: Phase, svc_seq: Phase, svc_conc: Phase) -> list[dict[str, Any]]:
    """The issue's two goals, the latency one like for like (unloaded and loaded), plus a reference ratio."""
    p50 = {k: stats(p.latencies)["p50"] for k, p in
           (("bs", bare_seq), ("bc", bare_conc), ("ss", svc_seq), ("sc", svc_conc))}
    rate = svc_conc.rate
    seq_ratio, conc_ratio, mixed = p50["ss"] / p50["bs"], p50["sc"] / p50["bc"], p50["sc"] / p50["bs"]
    return [
        {"goal": f"throughput ≥ {THROUGHPUT_GOAL:.0f} jobs/s ({len(svc_conc.starts)} at once)",
         "value": f"{rate:.1f} jobs/s", "ratio": rate, "met": rate >= THROUGHPUT_GOAL},
        {"goal": f"latency ≤ {LATENCY_GOAL:.0f}× bare, one at a time (p50)",
         "value": f"{seq_ratio:.2f}×", "ratio": seq_ratio, "met": seq_ratio <= LATENCY_GOAL},
        {"goal": f"latency ≤ {LATENCY_GOAL:.0f}× bare, all at once (p50)",
         "value": f"{conc_ratio:.2f}×", "ratio": conc_ratio, "met": conc_ratio <= LATENCY_GOAL},
        {"goal": "(reference) loaded service p50 / unloaded bare p50",
         "value": f"{mixed:.1f}×", "ratio": mixed, "met": None},
    ]


def jsonable(value: Any) -> Any:
    """Floats that JSON can carry (NaN → null), recursively."""
    if isinstance(value, float):
        return None if value != value else value
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


# -- the run ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    n_inputs = max(args.jobs, args.sequential)
    inputs = [rng.uniform(-1.0, 1.0, size=(args.samples, 2)) for _ in range(n_inputs)]
    result: dict[str, Any] = {"header": {
        "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "celery": celery.__version__, "stack": args.stack,
        "jobs": args.jobs, "concurrency": args.concurrency, "threads": args.threads,
        "sequential": args.sequential, "samples": args.samples,
    }}
    with tempfile.TemporaryDirectory(prefix="qkan-bench-") as tmp, \
            stack_env(args.stack, Path(tmp), args.redis_db) as env:
        folder = Path(tmp)
        model_path = tiny_model(folder)
        log(f"[setup] stack {args.stack}: starting LocalService (worker concurrency {args.concurrency}) ...")
        with LocalService(folder, env, concurrency=args.concurrency) as service:
            settings = service.settings
            app = celery_app(settings)
            meter = SqlMeter(engine_for(settings.resolved_database_url))
            pg = PgStats(settings.resolved_database_url) if args.stack == "postgresql" else None
            redis_url = settings.redis_url if args.stack == "embedded" else None
            watcher = EventWatcher(app)
            watcher.start()
            try:
                result.update(measure(args, service, app, watcher, meter, pg, redis_url, model_path, inputs))
            finally:
                watcher.stop()
    result["header"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def measure(args: argparse.Namespace, service: LocalService, app: Celery, watcher: EventWatcher, meter: SqlMeter,
            pg: PgStats | None, redis_url: str | None, model_path: Path, inputs: list[np.ndarray]) -> dict[str, Any]:
    """Every phase, in order: baseline, service, worker-path profile."""
    out: dict[str, Any] = {}
    cpu = CpuMeter(service, watcher, pg)
    cpu_per: dict[str, dict[str, float]] = {}
    log("[bare] waiting for the worker, warming up ...")
    warm_up_noops(app, watcher, args.timeout)
    log(f"[bare] {args.sequential} noops one at a time ...")
    before = cpu.snapshot()
    bare_seq = baseline_sequential(app, watcher, cpu, args.sequential, args.timeout)
    cpu_per["bare, one at a time"] = cpu.per_item(before, cpu.snapshot(), args.sequential)
    log(f"[bare] {args.jobs} noops at once ...")
    before_redis = redis_calls(redis_url) if redis_url else None
    before = cpu.snapshot()
    bare_conc = baseline_concurrent(app, watcher, cpu, args.jobs, args.threads, args.timeout)
    cpu_per[f"bare, {args.jobs} at once"] = cpu.per_item(before, cpu.snapshot(), args.jobs)
    after_noops = redis_calls(redis_url) if redis_url else None

    with Client(service.url, service.create_key("bench")) as qc:
        model_id = qc.upload_model(model_path)["id"]
        log("[service] warming up (model cache and backend import in every worker process) ...")
        with ThreadPoolExecutor(args.threads) as pool:
            warm = list(pool.map(lambda x: submit(qc, model_id, x), inputs[:4 * args.concurrency]))
        wait_jobs(qc, watcher, [s.job_id for s in warm], args.timeout)

        log(f"[service] {args.sequential} jobs one at a time ...")
        seq_subs = []
        before = cpu.snapshot()
        with meter.measure() as api_seq:
            for k in range(args.sequential):
                sub = submit(qc, model_id, inputs[k], cpu)
                watcher.wait(lambda sub=sub: watcher.job_tasks_done(sub.job_id), args.timeout, "job")
                seq_subs.append(sub)
        cpu_per["service, one at a time"] = cpu.per_item(before, cpu.snapshot(), args.sequential)
        seq_status = wait_jobs(qc, watcher, [s.job_id for s in seq_subs], args.timeout)
        svc_seq = service_phase("service, one at a time", seq_subs, seq_status, watcher)

        pg_before = pg.read() if pg else None
        redis_before = redis_calls(redis_url) if redis_url else None
        log(f"[service] {args.jobs} jobs at once ...")
        before = cpu.snapshot()
        with meter.measure() as api_conc:
            with ThreadPoolExecutor(args.threads) as pool:
                subs = list(pool.map(lambda x: submit(qc, model_id, x, cpu), inputs[:args.jobs]))
            watcher.wait(lambda: all(watcher.job_tasks_done(s.job_id) for s in subs), args.timeout,
                         f"{args.jobs} jobs")
        cpu_per[f"service, {args.jobs} at once"] = cpu.per_item(before, cpu.snapshot(), args.jobs)
        redis_after = redis_calls(redis_url) if redis_url else None
        pg_after = pg.read() if pg else None
        status = wait_jobs(qc, watcher, [s.job_id for s in subs], args.timeout)
        svc_conc = service_phase(f"service, {args.jobs} at once", subs, status, watcher)

        worker_log = service.data_dir / "worker-0.log"
        conc_tasks = {t for s in subs for t in watcher.by_job[s.job_id]}
        seq_tasks = {t for s in seq_subs for t in watcher.by_job[s.job_id]}
        out["worker_log"] = {
            "noop, one at a time": stats(worker_log_durations(worker_log, set(bare_seq.extra["task_ids"]))),
            f"noop, {args.jobs} at once": stats(worker_log_durations(worker_log, set(bare_conc.extra["task_ids"]))),
            "qkan.advance, one at a time": stats(worker_log_durations(worker_log, seq_tasks)),
            f"qkan.advance, {args.jobs} at once": stats(worker_log_durations(worker_log, conc_tasks)),
        }
        if pg_before is not None and pg_after is not None:
            out["pg_per_job"] = {k: (pg_after[k] - pg_before[k]) / args.jobs for k in PgStats.FIELDS}
        if before_redis is not None and after_noops is not None and redis_before and redis_after:
            out["redis_per_task"] = {
                "noop": per_task(after_noops - before_redis, args.jobs),
                "job": per_task(redis_after - redis_before, args.jobs),
            }
        if args.profile_jobs:
            log(f"[profile] worker path in this process, 2 × {args.profile_jobs} jobs ...")
            out["worker_profile"] = profile_worker_path(service, qc, meter, model_id, inputs, args.profile_jobs)

    for key, phase in (("bare_sequential", bare_seq), ("bare_concurrent", bare_conc),
                       ("service_sequential", svc_seq), ("service_concurrent", svc_conc)):
        summary = phase.summary()
        summary.pop("task_ids", None)
        if "segments" in summary:
            summary["segments"] = {k: stats(v) for k, v in summary["segments"].items()}
        summary.setdefault("failed", 0)
        out[key] = summary
    out["api_sql_sequential"] = api_seq.per(args.sequential)
    out["api_sql_concurrent"] = api_conc.per(args.jobs)
    out["submit_latency_s"] = {"one at a time": stats([s.returned - s.start for s in seq_subs]),
                               "all at once": stats([s.returned - s.start for s in subs])}
    out["cpu_ms_per_item"] = cpu_per
    out["goals"] = goals(bare_seq, bare_conc, svc_seq, svc_conc)
    return out


def per_task(calls: Counter, n: int) -> dict[str, Any]:
    by_command = {k: v / n for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v > 0}
    return {"total": sum(v for v in calls.values() if v > 0) / n, "by_command": by_command}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_report(args, result)
    print(json.dumps(jsonable(result), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
