"""Load benchmark: jobs through the whole service against a bare Celery round trip on the same worker.

The issue's goals, as ratios from one run because absolute rates move with
the shared machine's load: the service's throughput is at least a third of
bare Celery's, and a job's latency one at a time is at most 3× a bare Celery
round trip. One run measures both sides against the same Redis, with the same
worker process:

1. Baseline — ``bench.noop`` (a task that does nothing, in
   ``bench/noop_task.py``, which the worker imports through
   ``qkan-orch worker --include``) published to the ``local`` queue and run
   by the service's own ``qkan-orch worker`` (prefork, ``--concurrency`` processes,
   acks_late, prefetch 1: every setting identical to what jobs get).
   The app has no result backend (``task_ignore_result=True``), so instead of
   adding one — which would add a result write the service path never does —
   "done" is read from Celery task events, which the bench switches on (the
   worker by an ``enable_events`` broadcast, the API's ``task-sent`` by its
   app's ``task_send_sent_event``, whatever the service's configuration says;
   the noop pays for them as the job does): the ``task-succeeded`` event's
   ``timestamp`` is stamped by the worker when the task has returned. Round
   trip = that timestamp − the client's clock just before ``send_task``
   (same machine, same clock). Measured sequentially (one in flight, N times)
   and with all ``--jobs`` published at once from ``--threads`` threads.
2. Service — LocalService (the worker above; the API in a ``qkan-orch
   serve`` process of its own, as deployed, or with ``--api thread`` on a
   uvicorn thread of this process), one API key, one tiny model (width [2, 2, 1], reps 1), and
   jobs of 2 samples on the ``exact`` backend submitted through the Python
   ``Client``: sequentially (N times) and all ``--jobs`` at once from
   ``--threads`` threads. Latency = the job's ``finished_at`` (stamped by the
   worker, read back from the API) − the client's clock just before the POST.
   ``finished_at`` is stamped just before the job's last commit, a few ms
   before its task returns (the timeline shows that gap), so this flatters
   the service slightly against the baseline's "task returned".
   Throughput = jobs / (last finished − first submitted); the baseline's
   throughput is defined the same way.

The latency goal is judged like for like, unloaded service against unloaded
bare round trip: under load both p50s are mostly queueing, which is what the
throughput goal covers. The report also shows the 500-in-flight latency ratio
and the service's absolute rate, for reference only.

Where the time goes (printed after the results):

* CPU ms per job by process (API, client threads, event receiver, worker,
  Redis, PostgreSQL backends, everything else on the machine — and of that
  the PostgreSQL server's own processes, kernel threads and interrupts —,
  idle), from psutil — with the ceiling that CPU cost puts on the rate, and a warning
  when other processes took a large share of the cores during a phase;
* per-job timeline from timestamps on one clock: client POST → ``created_at``
  (row inserted) → ``task-sent`` event (API published) → POST returns;
  ``task-received`` (worker took the message) → ``started_at`` (job claimed,
  marked running) → ``finished_at`` → ``task-succeeded`` (lease released,
  task returned);
* ``--api thread`` only: the API's database work per submission, counted
  with SQLAlchemy engine events on the engine this process's API thread uses
  (statements by kind, their time, commits), and its broker publish time
  (Celery publish signals);
* worker task durations from the worker log (``succeeded in Xs``);
* PostgreSQL only: commits and row writes per job over both processes
  (``pg_stat_database``), so the worker's share follows by difference
  (pool pre-pings run in autocommit, so each checkout is a commit too);
* embedded Redis only: Redis commands per task (``INFO commandstats``; the
  system Redis is shared with other users, so its counters would lie);
* PostgreSQL only: the latency floor — a bare round trip and an INSERT +
  durable COMMIT on the bench database (``load_floor.py``); two such commits
  lie between a job's POST and its ``finished_at``, so their sum is shown
  as a ratio to the bare round trip next to the latency goal;
* the worker path in this process: the worker is stopped, jobs are submitted,
  and ``advance_job`` runs here — once with the SQL meter, once under cProfile;
* PostgreSQL, API in its own process: after the goals, what the service's
  throughput ratio would be if its API process, then its API and workers,
  cost a job what the floor with duties does (``load_report.at_duties_cost``):
  what rewriting each hot path into the floor's shape could reach.

Caveats, printed in the header too: with ``--api thread`` the API shares this
process (and its GIL) with the 16 client threads and the event receiver, which
costs it CPU and latency a deployed API does not pay (its own process is the
default); on a shared 2-core machine other work moves the numbers, so read the
"other processes on the machine" row before comparing runs.

Not a test and not run by CI. Run it with::

    .venv/bin/python bench/service_load.py                    # an empty system Redis DB + fresh PostgreSQL database
    .venv/bin/python bench/service_load.py --stack embedded   # embedded Redis + SQLite
    .venv/bin/python bench/service_load.py --help

A readable report goes to stdout, followed by one JSON line with every number;
progress notes go to stderr. This file is the run; the phases are in
load_phases.py and load_profile.py, the instruments in load_instruments.py and load_cpu.py,
the report in load_report.py, the baseline task in noop_task.py.
"""

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import celery
import noop_task
import numpy as np
from celery import Celery
from floor_service import running_floor, succeeded
from load_cpu import CpuMeter
from load_floor import commit_cost
from load_instruments import EventWatcher, PgStats, SqlMeter, redis_calls, worker_log_durations
from load_phases import (
    Send,
    Submitted,
    all_at_once,
    one_at_a_time,
    post_floor,
    publish_noop,
    service_phase,
    submit,
    wait_jobs,
    warm_up_noops,
)
from load_profile import profile_worker_path
from load_report import Phase, at_duties_cost, goals, jsonable, log, per_task, print_report, stats

from qkan_orch.client import Client
from qkan_orch.models import build_model, parse_spec, save_model
from qkan_orch.service.broker import celery_app
from qkan_orch.service.devstack import NoDatabase, claimed_redis_database, fresh_postgres_database
from qkan_orch.service.local import LocalService
from qkan_orch.service.store.database import engine_for

STACKS = ("postgresql", "sqlite-system", "embedded")
BENCH = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are the issue's reference load."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs (and noops) in flight at once (default: 500)")
    parser.add_argument("--stack", choices=STACKS, default="postgresql",
                        help="postgresql: system Redis + fresh PostgreSQL database (default); sqlite-system: "
                             "system Redis + SQLite; embedded: embedded Redis + SQLite")
    parser.add_argument("--api", choices=("process", "thread"), default="process",
                        help="process: the API in a qkan-orch serve process of its own, as deployed (default); "
                             "thread: on a uvicorn thread of this process, sharing its GIL with the client threads "
                             "and the event receiver, where the SQL meter sees its statements")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes, prefork (default: 2)")
    parser.add_argument("--threads", type=int, default=16, help="client threads submitting at once (default: 16)")
    parser.add_argument("--sequential", type=int, default=200,
                        help="one-at-a-time round trips of each kind, for unloaded latency (default: 200)")
    parser.add_argument("--samples", type=int, default=2, help="input rows per job (default: 2)")
    parser.add_argument("--redis-db", type=int,
                        help="database number on the system Redis; must be empty (default: the first empty one, "
                             "claimed for this run)")
    parser.add_argument("--profile-jobs", type=int, default=50,
                        help="jobs run in this process per worker-path profile pass, 0 skips it (default: 50)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on a phase after this many s")
    args = parser.parse_args(argv)
    for name in ("jobs", "concurrency", "threads", "sequential", "samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


@contextlib.contextmanager
def stack_env(stack: str, folder: Path, redis_db: int | None) -> Iterator[dict[str, str]]:
    """QKAN_* settings for ``--stack``; service defaults otherwise (no test-speed tweaks).

    The worker imports the noop task from bench/ (``--include``), so bench/ goes on its PYTHONPATH.
    """
    env = {"QKAN_LOG_LEVEL": "INFO",  # the worker log's "succeeded in" lines are part of the profile
           "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    with contextlib.ExitStack() as resources:
        try:
            if stack != "embedded":
                databases = (redis_db,) if redis_db is not None else tuple(range(15, 0, -1))
                env["QKAN_REDIS_URL"] = resources.enter_context(claimed_redis_database(databases=databases))
            if stack == "postgresql":
                env["QKAN_DATABASE_URL"] = resources.enter_context(fresh_postgres_database("qkan_bench"))
        except NoDatabase as exc:
            raise SystemExit(f"{exc} (use --stack embedded)") from None
        env.setdefault("QKAN_DATABASE_URL", f"sqlite:///{folder / 'qkan.db'}")
        yield env


def tiny_model(folder: Path) -> Path:
    """The load test's model: width [2, 2, 1], reps 1, float32 — two exact rounds per job."""
    path = folder / "tiny.safetensors"
    save_model(build_model(parse_spec({"width": [2, 2, 1], "reps": 1}), seed=0).float(), str(path))
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    n_inputs = max(args.jobs, args.sequential)
    inputs = [rng.uniform(-1.0, 1.0, size=(args.samples, 2)) for _ in range(n_inputs)]
    result: dict[str, Any] = {"header": {
        "cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "celery": celery.__version__, "stack": args.stack, "api": args.api,
        "jobs": args.jobs, "concurrency": args.concurrency, "threads": args.threads,
        "sequential": args.sequential, "samples": args.samples,
    }}
    with tempfile.TemporaryDirectory(prefix="qkan-bench-") as tmp, \
            stack_env(args.stack, Path(tmp), args.redis_db) as env:
        folder = Path(tmp)
        model_path = tiny_model(folder)
        log(f"[setup] stack {args.stack}: starting LocalService (worker concurrency {args.concurrency}) ...")
        service = LocalService(folder, env, concurrency=args.concurrency,
                               worker_include=f"{noop_task.__name__},floor_service")
        service.start(api_thread=args.api == "thread")
        try:
            api_url = service.url if args.api == "thread" else service.start_api_processes(1)[0]
            settings = service.settings
            app = celery_app(settings)
            app.conf.task_send_sent_event = True  # an API thread shares this app: its task-sent events time a job
            meter = SqlMeter(engine_for(settings.resolved_database_url))
            pg = PgStats(settings.resolved_database_url) if args.stack == "postgresql" else None
            redis_url = settings.redis_url if args.stack == "embedded" else None
            watcher = EventWatcher(app)
            watcher.start()
            try:
                result.update(measure(args, service, api_url, app, watcher, meter, pg, redis_url, model_path,
                                      inputs))
            finally:
                watcher.stop()
        finally:
            service.stop()
    result["header"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return result


def measure(args: argparse.Namespace, service: LocalService, api_url: str, app: Celery, watcher: EventWatcher,
            meter: SqlMeter, pg: PgStats | None, redis_url: str | None, model_path: Path,
            inputs: list[np.ndarray]) -> dict[str, Any]:
    """Every phase, in order: baseline, floor service (PostgreSQL), service, worker-path profile."""
    out: dict[str, Any] = {}
    cpu = CpuMeter(service, watcher, pg)
    cpu_per: dict[str, dict[str, float]] = {}
    log("[bare] waiting for the worker, warming up ...")
    warm_up_noops(app, watcher, args.timeout)
    log(f"[bare] {args.sequential} noops one at a time ...")
    before = cpu.snapshot()
    noop: Send = partial(publish_noop, app, cpu)
    bare_seq, _ = one_at_a_time("bare celery, one at a time", [noop] * args.sequential, watcher, args.timeout)
    cpu_per["bare, one at a time"] = cpu.per_item(before, cpu.snapshot(), args.sequential)
    log(f"[bare] {args.jobs} noops at once ...")
    before_redis = redis_calls(redis_url) if redis_url else None
    before = cpu.snapshot()
    bare_conc, _ = all_at_once(f"bare celery, {args.jobs} at once", [noop] * args.jobs, args.threads, watcher,
                               args.timeout)
    cpu_per[f"bare, {args.jobs} at once"] = cpu.per_item(before, cpu.snapshot(), args.jobs)
    after_noops = redis_calls(redis_url) if redis_url else None
    floor = measure_floor(args, service, watcher, cpu, cpu_per, model_path, inputs) if pg is not None else {}

    # the bench measures what a job costs, not the per-key limits: its key's own limits are out of the way
    with Client(api_url, service.create_key("bench", rate_limit=1e6, max_active_jobs=10**6)) as qc:
        model_id = qc.upload_model(model_path).id
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

        worker_log = service.worker_logs[0]
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
        if pg is not None:
            log("[floor] PostgreSQL round trip and durable commit ...")
            out["commit_cost"] = commit_cost(service.settings.resolved_database_url)
        if args.profile_jobs:
            log(f"[profile] worker path in this process, 2 × {args.profile_jobs} jobs ...")
            out["worker_profile"] = profile_worker_path(service, qc, meter, model_id, inputs, args.profile_jobs)

    for key, phase in (("bare_sequential", bare_seq), ("bare_concurrent", bare_conc),
                       ("floor_sequential", floor.get("sequential")), ("floor_no_flush", floor.get("no flush")),
                       ("floor_concurrent", floor.get("concurrent")),
                       ("floor_duties_sequential", floor.get("duties sequential")),
                       ("floor_duties_concurrent", floor.get("duties concurrent")),
                       ("service_sequential", svc_seq), ("service_concurrent", svc_conc)):
        if phase is None:
            continue
        summary = phase.summary()
        summary.pop("task_ids", None)
        if "segments" in summary:
            summary["segments"] = {k: stats(v) for k, v in summary["segments"].items()}
        summary.setdefault("failed", 0)
        out[key] = summary
    if args.api == "thread":  # an API process's statements are not this process's to meter
        out["api_sql_sequential"] = api_seq.per(args.sequential)
        out["api_sql_concurrent"] = api_conc.per(args.jobs)
    out["submit_latency_s"] = {"one at a time": stats([s.returned - s.start for s in seq_subs]),
                               "all at once": stats([s.returned - s.start for s in subs])}
    out["cpu_ms_per_item"] = cpu_per
    out["goals"] = goals(bare_seq, bare_conc, svc_seq, svc_conc, out.get("commit_cost"),
                         floor.get("sequential"), floor.get("concurrent"), floor.get("no flush"),
                         floor.get("duties sequential"), floor.get("duties concurrent"))
    if "duties concurrent" in floor and args.api == "process":  # an API thread has no process of its own
        out["goals"] += at_duties_cost(out["goals"][0]["ratio"], cpu_per[f"service, {args.jobs} at once"],
                                       cpu_per[f"floor + duties, {args.jobs} at once"])
    return out


# the floor's phases, in order: name, label, CPU column (None: not metered), post_floor's options, all at once
FLOOR_ARMS: tuple[tuple[str, str, str | None, dict[str, bool], bool], ...] = (
    ("sequential", "floor service", "floor", {}, False),
    ("no flush", "floor, commits not flushed", None, {"durable": False}, False),
    ("concurrent", "floor service", "floor", {}, True),
    ("duties sequential", "floor + duties", "floor + duties", {"duties": True}, False),
    ("duties concurrent", "floor + duties", "floor + duties", {"duties": True}, True),
)


def measure_floor(args: argparse.Namespace, service: LocalService, watcher: EventWatcher, cpu: CpuMeter,
                  cpu_per: dict[str, dict[str, float]], model_path: Path, inputs: list[np.ndarray]) -> dict[str, Phase]:
    """The floor service (``floor_service.py``) one at a time and all at once, on the same worker and database."""
    log("[floor] the floor service: warming up ...")
    with running_floor(service.env, model_path, service.data_dir / "floor-api.log") as (client, process):
        warm = [post_floor(client, x) for x in inputs[:4 * args.concurrency]]
        watcher.wait(lambda: all(watcher.task_done(s.job_id) for s in warm), args.timeout, "floor warm-up")
        cpu.extra_apis.append(process)
        phases: dict[str, tuple[Phase, list[Submitted]]] = {}
        for name, label, metered, options, at_once in FLOOR_ARMS:
            n = args.jobs if at_once else args.sequential
            log(f"[floor] {n} jobs: {label}, {'all at once' if at_once else 'one at a time'} ...")
            sends = [partial(post_floor, client, x, cpu, **options) for x in inputs[:n]]
            before = cpu.snapshot()
            phases[name] = (all_at_once(f"{label}, {n} at once", sends, args.threads, watcher, args.timeout)
                            if at_once else one_at_a_time(f"{label}, one at a time", sends, watcher, args.timeout))
            if metered:
                cpu_per[f"{metered}, {n} at once" if at_once else f"{metered}, one at a time"] = cpu.per_item(
                    before, cpu.snapshot(), n)
        cpu.extra_apis.remove(process)  # before it stops: a stopped process reads as 0 s
    for phase, subs in phases.values():  # a task can return without a result
        phase.extra["failed"] += len(subs) - succeeded(service.settings.resolved_database_url, [s.job_id for s in subs])
        phase.extra["post_s"] = stats([s.returned - s.start for s in subs])
    return {name: phase for name, (phase, _) in phases.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print_report(args, result)
    print(json.dumps(jsonable(result), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
