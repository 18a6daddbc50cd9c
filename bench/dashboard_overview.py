"""How long the dashboard's pages take with 10 000 jobs in PostgreSQL (issue 12: the Overview under 1 s).

Fills a fresh PostgreSQL database (the system server) with ``--jobs`` jobs —
every state, finish times spread over the last two hours, two rounds each for
the ones that started — then serves the real API app in this process (FastAPI's
TestClient: the ASGI app without a socket; the broker is the system Redis,
with no workers) and times, after one warm-up each, the median of ``--runs``
requests: the Overview (whole page and live region), the Jobs page, and
``/healthz`` as the baseline measured in the same process. Not a test and not
run by CI::

    .venv/bin/python bench/dashboard_overview.py               # 10 000 jobs, 15 runs
    .venv/bin/python bench/dashboard_overview.py --jobs 50000
"""

import argparse
import os
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import insert

from qkan_orch.service.api.app import create_app
from qkan_orch.service.broker import celery_app
from qkan_orch.service.devstack import claimed_redis_database, fresh_postgres_database
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.database import engine_for, session_scope, upgrade
from qkan_orch.service.store.keys import create_key
from qkan_orch.service.store.states import TERMINAL, JobState
from qkan_orch.service.store.tables import Job, Round

BACKENDS = ("aer", "exact", "braket:local")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=15)
    return parser.parse_args()


def fill(url: str, owner: int, count: int) -> None:
    """``count`` jobs of one key in one bulk insert, their rounds in another."""
    rng = np.random.default_rng(0)
    now = datetime.now(UTC)
    kinds = list(JobState)
    states = [kinds[k] for k in rng.choice(len(kinds), size=count, p=[0.05, 0.03, 0.02, 0.8, 0.06, 0.04])]
    jobs, rounds = [], []
    for i, state in enumerate(states):
        created = now - timedelta(seconds=float(rng.uniform(0, 7200)))
        started = None if state == JobState.QUEUED else created + timedelta(seconds=float(rng.uniform(0, 5)))
        finished = started + timedelta(seconds=float(rng.uniform(0, 60))) if state in TERMINAL and started else None
        job_id = str(uuid.UUID(int=i + 1))
        jobs.append({"id": job_id, "owner_id": owner, "kind": "inference", "backend": BACKENDS[i % len(BACKENDS)],
                     "queue": "local", "request_hash": "", "state": state.value, "inputs": b"", "options": {},
                     "rounds_done": 2 if state == JobState.SUCCEEDED else 0, "rounds_total": 2, "samples": 64,
                     "created_at": created, "started_at": started, "finished_at": finished, "updated_at": now})
        if started is not None:
            rounds += [{"job_id": job_id, "number": n, "provider_job_ids": [], "submitted_at": started} for n in (0, 1)]
    with engine_for(url).begin() as connection:
        connection.execute(insert(Job), jobs)
        connection.execute(insert(Round), rounds)


def median_seconds(client: TestClient, path: str, runs: int, headers: dict[str, str] | None = None) -> float:
    client.get(path, headers=headers).raise_for_status()  # warm-up: templates compiled, connections open
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        client.get(path, headers=headers).raise_for_status()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    args = parse_args()
    with fresh_postgres_database("qkan_bench") as url, claimed_redis_database() as redis_url:
        upgrade(url)
        with session_scope(url) as session:
            key, token = create_key(session, "bench", admin=True)
            owner = key.id
        began = time.perf_counter()
        fill(url, owner, args.jobs)
        print(f"{args.jobs} jobs inserted in {time.perf_counter() - began:.1f} s "
              f"({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})")
        settings = Settings(database_url=url, redis_url=redis_url)
        with TestClient(create_app(settings, celery=celery_app(settings)), base_url="http://localhost") as client:
            client.post("/dashboard/sign-in", data={"api_key": token}).raise_for_status()
            baseline = median_seconds(client, "/healthz", args.runs)
            print(f"{'request':<34}{'median s':>10}{'× /healthz':>12}")
            for label, path, headers in [("/healthz (baseline)", "/healthz", None),
                                         ("Overview, whole page", "/dashboard", None),
                                         ("Overview, live region", "/dashboard", {"X-Dashboard-Live": "1"}),
                                         ("Jobs page (50 of them)", "/dashboard/jobs", None),
                                         ("Jobs page, state=succeeded", "/dashboard/jobs?state=succeeded", None)]:
                seconds = median_seconds(client, path, args.runs, headers)
                print(f"{label:<34}{seconds:>10.4f}{seconds / baseline:>12.1f}")
        print("target: the Overview under 1 s with 10 000 jobs")


if __name__ == "__main__":
    main()
