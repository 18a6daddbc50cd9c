"""Bounded soak: a steady mixed load for many minutes, workers killed on a schedule; nothing may be lost or leak.

The load benchmark (service_load.py) measures a burst; this runs the service
the way it is run — one API process (``qkan-orch serve`` on the system Redis
and a fresh PostgreSQL database, from service_load's ``stack_env``), worker
processes, a few keys — for ``--minutes`` at ``--rate`` jobs/s:

* jobs mixed by backend (mostly ``exact``, noise-emulated ``emulate:*``,
  now and then shot-based ``aer``) and size (1–64 samples, three models);
* ~5 % of jobs cancelled 0–0.2 s after they were submitted (racing the
  worker: most jobs take ~0.1 s);
* every ``--kill-every`` s the last worker's process group is SIGKILLed (no
  warm shutdown, nothing acknowledged); the supervisor starts it again. The
  first worker is never killed, so its memory is that of one process over
  the whole run;
* ``QKAN_RETENTION_DAYS=1`` so the workers' hourly prune runs (it deletes
  nothing this young; it must not touch active jobs either).

Printed at the end: jobs submitted / succeeded / failed / cancelled / lost
(lost: not terminal ``--drain`` s after submissions stop; goal 0, and failed
only where a cancel was asked for), p50/p99 latency submit → terminal (the
client's clock before the POST to the job's ``finished_at``; one machine,
one clock), RSS of the API process and of each worker group after a warm-up
minute and at the end (goal: growth ≤ 20 %), ``pg_database_size`` at start
and end. ``--results`` writes the same as a markdown table.

Not a test and not run by CI::

    nice -n 5 .venv/bin/python bench/soak.py                      # 20 minutes at 10 jobs/s
    nice -n 5 .venv/bin/python bench/soak.py --minutes 2 --results /tmp/soak.md
"""

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from load_phases import all_jobs, epoch
from load_report import log
from service_load import stack_env
from soak_report import Measures, Outcome, memory_of, print_and_write

from qkan_orch.client import ApiError, Client, Job, JobState
from qkan_orch.models import build_model, parse_spec, save_model
from qkan_orch.service.local import LocalService
from qkan_orch.service.store.database import engine_for

BENCH = Path(__file__).resolve().parent
MODELS = ({"width": [2, 2, 1], "reps": 1}, {"width": [2, 3, 1], "reps": 2}, {"width": [3, 4, 2], "reps": 1})
KEYS = 4
# Production defaults except: a dead worker's prefetched message comes back after 60 s, not 300 s (the
# sweeper already resumes a job whose lease ran out; this is for the messages it never claimed)
ENV = {"QKAN_BROKER_VISIBILITY_TIMEOUT": "60", "QKAN_RETENTION_DAYS": "1", "QKAN_LOG_LEVEL": "WARNING"}


@dataclass(frozen=True)
class Backend:
    name: str
    weight: float
    shots: int | None = None
    mitigation: str | None = None


MIX = (Backend("exact", 0.6), Backend("emulate:fake_melbourne", 0.2), Backend("emulate:dm", 0.1),
       Backend("aer", 0.05, shots=64), Backend("aer:fake_melbourne", 0.05, shots=64, mitigation="none"))


@dataclass
class Sent:
    """One submission as the client saw it."""

    job_id: str
    backend: str
    start: float
    cancel_asked: bool = False


@dataclass
class Load:
    """What the load generator did, shared by its threads (lists and Counters: appends are atomic)."""

    sent: list[Sent] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)  # submit errors by "status code"
    errors: Counter = field(default_factory=Counter)  # anything else a client call raised, by type
    cancel_too_late: int = 0  # cancels answered 409: the job had finished already
    kills: list[float] = field(default_factory=list)  # seconds into the run
    behind: float = 0.0  # the most the pacing loop fell behind its schedule, s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="minutes of load (default: 20)")
    parser.add_argument("--rate", type=float, default=10.0, help="jobs per second, at most 50 (default: 10)")
    parser.add_argument("--workers", type=int, default=2, help="worker process groups (default: 2)")
    parser.add_argument("--concurrency", type=int, default=1, help="processes per worker (default: 1)")
    parser.add_argument("--kill-every", type=float, default=240.0,
                        help="SIGKILL the last worker every this many s, from 2 minutes in (default: 240)")
    parser.add_argument("--cancel", type=float, default=0.05, help="share of jobs cancelled (default: 0.05)")
    parser.add_argument("--warm-up", type=float, default=60.0, help="s before the 'start' RSS (default: 60)")
    parser.add_argument("--drain", type=float, default=120.0,
                        help="s after the last submission before unfinished jobs count as lost (default: 120)")
    parser.add_argument("--threads", type=int, default=16, help="client threads (default: 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logs", type=Path, help="copy the API and worker logs into this folder at the end")
    parser.add_argument("--results", type=Path, default=BENCH / "results" / "soak.md",
                        help="markdown table written here (default: bench/results/soak.md)")
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 50:
        parser.error("--rate must be in (0, 50]")
    if args.workers < 2:
        parser.error("--workers must be at least 2: the first one is never killed")
    return args


def save_models(folder: Path) -> list[Path]:
    paths = []
    for n, spec in enumerate(MODELS):
        paths.append(folder / f"m{n}.safetensors")
        save_model(build_model(parse_spec(spec), seed=n).float(), str(paths[-1]))
    return paths


def one_job(args: argparse.Namespace, load: Load, clients: list[tuple[Client, list[str]]], i: int) -> None:
    """Submit job ``i`` (its backend, model and size drawn from its own seed), maybe cancel it a moment later."""
    rng = np.random.default_rng((args.seed, i))
    qc, model_ids = clients[i % len(clients)]
    m = int(rng.integers(len(MODELS)))
    backend = MIX[int(rng.choice(len(MIX), p=[b.weight for b in MIX]))]
    samples = int(2 ** rng.uniform(0, 6))  # 1–64, log-uniform: most jobs small, some large
    x = rng.uniform(-1, 1, size=(samples, MODELS[m]["width"][0]))
    start = time.time()
    try:
        job = qc.submit(model_ids[m], x, backend=backend.name, shots=backend.shots, mitigation=backend.mitigation)
    except ApiError as exc:
        load.refused[f"{exc.status} {exc.code}" + (f" ({exc.message[-100:]})" if exc.status == 0 else "")] += 1
        return
    except Exception as exc:  # counted and reported: one bad call must not end a 20-minute run
        load.errors[f"submit: {type(exc).__name__}"] += 1
        return
    sent = Sent(job.id, backend.name, start)
    load.sent.append(sent)
    if rng.random() < args.cancel:
        time.sleep(rng.uniform(0, 0.2))  # most jobs take ~0.1 s: a cancel races the worker
        try:
            qc.cancel(job.id)
            sent.cancel_asked = True
        except ApiError as exc:
            if exc.status != 409:
                load.errors[f"cancel: {exc.status} {exc.code}"] += 1
            else:
                load.cancel_too_late += 1
        except Exception as exc:  # counted, as above
            load.errors[f"cancel: {type(exc).__name__}"] += 1


def generate(args: argparse.Namespace, service: LocalService, load: Load,
             clients: list[tuple[Client, list[str]]], on_warm: Callable[[], None]) -> None:
    """Submit at ``--rate`` until the time is up, killing the last worker on schedule; ``on_warm`` runs once,
    ``--warm-up`` s in, before any kill due then."""
    t0 = time.monotonic()
    end = t0 + 60 * args.minutes
    next_kill = t0 + min(120.0, args.kill_every)
    warm = False
    with ThreadPoolExecutor(args.threads) as pool:
        futures = []
        for i in range(int(args.rate * 60 * args.minutes)):
            due = t0 + i / args.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            load.behind = max(load.behind, time.monotonic() - due)
            if not warm and time.monotonic() - t0 >= args.warm_up:
                warm = True
                on_warm()
            if time.monotonic() >= next_kill:
                load.kills.append(round(time.monotonic() - t0, 1))
                log(f"[soak] {load.kills[-1]:.0f} s: SIGKILL worker {len(service.workers)} "
                    f"(pid {service.workers[-1].pid}), {len(load.sent)} jobs submitted")
                service.kill_worker(service.workers[-1])
                next_kill += args.kill_every
            futures.append(pool.submit(one_job, args, load, clients, i))
            if i % int(60 * args.rate) == 0:
                log(f"[soak] {time.monotonic() - t0:.0f} s: {len(load.sent)} submitted, "
                    f"{sum(not f.done() for f in futures)} submissions in progress")
            if time.monotonic() >= end:
                break
        for future in futures:
            future.result()  # a client error other than a refusal is a failure of the run


def drain(args: argparse.Namespace, clients: list[tuple[Client, list[str]]], load: Load) -> dict[str, Job]:
    """Every key's jobs, read until all sent are terminal or ``--drain`` s have passed."""
    deadline = time.monotonic() + args.drain
    wanted = {s.job_id for s in load.sent}
    while True:
        found: dict[str, Job] = {}
        for qc, _ in clients:
            found.update(all_jobs(qc))
        open_ = [j for j in wanted if j not in found or not found[j].state.terminal]
        if not open_ or time.monotonic() >= deadline:
            return found
        log(f"[soak] draining: {len(open_)} jobs not finished yet")
        time.sleep(5)


def outcome(load: Load, jobs: dict[str, Job]) -> Outcome:
    states = Counter(jobs[s.job_id].state if s.job_id in jobs else "missing" for s in load.sent)
    latency = [epoch(jobs[s.job_id].finished_at) - s.start for s in load.sent
               if s.job_id in jobs and jobs[s.job_id].state.terminal]
    failed = [jobs[s.job_id] for s in load.sent if s.job_id in jobs and jobs[s.job_id].state == JobState.FAILED]
    cancel_asked = {s.job_id for s in load.sent if s.cancel_asked}
    return Outcome(
        submitted=len(load.sent), refused=dict(load.refused),
        states={str(k): v for k, v in states.items()},
        lost=sum(n for state, n in states.items() if state == "missing" or not JobState(state).terminal),
        failed_codes=dict(Counter(j.error.code if j.error else "?" for j in failed)),
        failed_without_cancel=sum(j.id not in cancel_asked for j in failed),
        cancel_asked=len(cancel_asked),
        latency=latency,
        latency_by_backend={b.name: [epoch(jobs[s.job_id].finished_at) - s.start for s in load.sent
                                     if s.backend == b.name and s.job_id in jobs
                                     and jobs[s.job_id].state == JobState.SUCCEEDED] for b in MIX},
        kills=load.kills, behind=load.behind, errors=dict(load.errors), cancel_too_late=load.cancel_too_late)


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="qkan-soak-") as tmp, stack_env("postgresql", Path(tmp), None) as env:
        folder = Path(tmp)
        service = LocalService(folder, {**env, **ENV}, concurrency=args.concurrency)
        service.start(workers=args.workers, api_thread=False)
        try:
            url = service.start_api_processes(1)[0]
            engine = engine_for(service.settings.resolved_database_url)
            measures = Measures(database_start=Measures.database_size(engine))
            paths = save_models(folder)
            clients = []
            for k in range(KEYS):
                qc = Client(url, service.create_key(f"soak-{k}", rate_limit=1e6, max_active_jobs=10**6))
                clients.append((qc, [qc.upload_model(p).id for p in paths]))
            load = Load()

            def sample_at_warm_up() -> None:
                measures.rss_start = memory_of(service)
                measures.database_warm = Measures.database_size(engine)
                log(f"[soak] after warm-up: RSS {measures.rss_start}")

            log(f"[soak] {args.minutes:g} min at {args.rate:g} jobs/s, {args.workers} workers × {args.concurrency}")
            generate(args, service, load, clients, sample_at_warm_up)
            log(f"[soak] submissions over ({len(load.sent)}); draining up to {args.drain:g} s")
            jobs = drain(args, clients, load)
            measures.rss_end = memory_of(service)
            measures.database_end = Measures.database_size(engine)
            for qc, _ in clients:
                qc.close()
        finally:
            service.stop()
            if args.logs:
                args.logs.mkdir(parents=True, exist_ok=True)
                for log_file in folder.glob("*.log"):
                    shutil.copy(log_file, args.logs)
    print_and_write(args, outcome(load, jobs), measures)


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
