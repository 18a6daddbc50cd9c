"""Ordinary requests while many event streams are open: p50/p99 of /healthz, GET a job, POST a job.

The issue's scenario is a dashboard left open in many tabs: before, each
stream held a database connection, so 16 streams made a GET take 27 s and 50
stopped the whole API. Here ``--streams`` streams (default 200) are held open
by a child process (asyncio + httpx), spread over ``--keys`` API keys so that
no key exceeds ``QKAN_MAX_STREAMS_PER_KEY``, each watching a job that stays
queued (no worker runs). The same requests are timed with no stream open and
with all of them open, ``--samples`` times each, one at a time, from this
process; the API runs on a uvicorn thread of this process (LocalService), so
its connection pool is sampled directly while the streams are open. Over the
cap, one more stream per key must be refused with 429.

Broker: a claimed database of the system Redis if it answers, else the
embedded Redis. Database: SQLite (the embedded default), or a fresh
PostgreSQL database with ``--postgres``. Not run by CI.
"""

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
import numpy as np

from qkan_orch.client import Client
from qkan_orch.models import build_model, parse_spec, save_model
from qkan_orch.service.devstack import NoDatabase, claimed_redis_database, fresh_postgres_database
from qkan_orch.service.local import LocalService
from qkan_orch.service.store.database import engine_for

STREAM_SETUP_SECONDS = 120


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=200, help="event streams held open")
    parser.add_argument("--keys", type=int, default=10, help="API keys the streams are spread over")
    parser.add_argument("--samples", type=int, default=100, help="timed requests of each kind, per phase")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    return parser.parse_args(argv)


def hold_streams(url: str, plan: list[tuple[str, str]], ready: Connection, stop: Event) -> None:
    """Child process: open every (token, job id) stream, report the statuses once each has answered, hold them."""
    asyncio.run(_hold(url, plan, ready, stop))


async def _hold(url: str, plan: list[tuple[str, str]], ready: Connection, stop: Event) -> None:
    statuses: Counter[int] = Counter()
    answered = asyncio.Semaphore(0)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60, read=None), limits=limits) as client:

        async def follow(token: str, job_id: str) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            async with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as answer:
                statuses[answer.status_code] += 1
                if answer.status_code != 200:
                    answered.release()
                    return
                first = True
                async for line in answer.aiter_lines():
                    if first and line.startswith("data:"):
                        first = False
                        answered.release()

        tasks = [asyncio.create_task(follow(token, job_id)) for token, job_id in plan]
        try:
            async with asyncio.timeout(STREAM_SETUP_SECONDS):
                for _ in plan:
                    await answered.acquire()
        except TimeoutError:
            pass
        ready.send(dict(statuses))
        await asyncio.to_thread(stop.wait)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextmanager
def open_streams(url: str, plan: list[tuple[str, str]]) -> Iterator[dict[int, int]]:
    """Streams held by a child process for the duration of the block; yields how many got each status."""
    spawn = multiprocessing.get_context("spawn")  # this process runs threads (the API): never fork it
    receive, send = spawn.Pipe(duplex=False)
    stop = spawn.Event()
    child = spawn.Process(target=hold_streams, args=(url, plan, send, stop))
    child.start()
    try:
        if not receive.poll(STREAM_SETUP_SECONDS + 30):
            raise RuntimeError("the stream holder did not report")
        yield receive.recv()
    finally:
        stop.set()
        child.join(30)
        if child.is_alive():
            child.kill()


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def time_requests(samples: int, requests: dict[str, Callable[[], httpx.Response]]) -> dict[str, list[float]]:
    """Each request ``samples`` times, interleaved; any answer but 2xx stops the run (no 500 anywhere)."""
    times: dict[str, list[float]] = {name: [] for name in requests}
    for _ in range(samples):
        for name, call in requests.items():
            start = time.perf_counter()
            answer = call()
            times[name].append(time.perf_counter() - start)
            if not answer.is_success:
                raise RuntimeError(f"{name} answered {answer.status_code}: {answer.text[:200]}")
    return times


def run(args: argparse.Namespace) -> None:
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qkan-streams-")))
        env = {"QKAN_LOG_LEVEL": "WARNING"}
        try:
            env["QKAN_REDIS_URL"] = stack.enter_context(claimed_redis_database())
        except NoDatabase:
            pass  # LocalService starts the embedded Redis
        if args.postgres:
            env["QKAN_DATABASE_URL"] = stack.enter_context(fresh_postgres_database("qkan_bench"))
        service = LocalService(folder, env)
        service.start(workers=0)
        stack.callback(service.stop)
        per_key = -(-args.streams // args.keys)
        print(f"API {service.url}: {args.streams} streams over {args.keys} keys "
              f"(cap {service.settings.max_streams_per_key} per key), "
              f"{'PostgreSQL' if args.postgres else 'SQLite'}, "
              f"{'system' if 'QKAN_REDIS_URL' in env else 'embedded'} Redis, no worker")
        if per_key > service.settings.max_streams_per_key:
            raise SystemExit(f"{per_key} streams per key exceed the cap: use --keys ≥ "
                             f"{-(-args.streams // service.settings.max_streams_per_key)}")

        model_path = folder / "model.safetensors"
        save_model(build_model(parse_spec({"width": [2, 2, 1], "reps": 1})), str(model_path))
        x = np.random.default_rng(0).uniform(-1, 1, (2, 2)).tolist()
        plan: list[tuple[str, str]] = []
        owners = []
        for k in range(args.keys):
            token = service.create_key(f"bench-{k}")
            with Client(service.url, token) as qc:
                model_id = qc.upload_model(model_path).id
                jobs = [qc.submit(model_id, x).id for _ in range(5)]
            owners.append((token, model_id, jobs))
            plan += [(token, jobs[i % len(jobs)]) for i in range(per_key)][: args.streams - len(plan)]

        token, model_id, jobs = owners[0]
        http = stack.enter_context(httpx.Client(base_url=service.url, timeout=60,
                                                headers={"Authorization": f"Bearer {token}"}))
        requests = {
            "GET /healthz": lambda: http.get("/healthz"),
            "GET /v1/jobs/{id}": lambda: http.get(f"/v1/jobs/{jobs[0]}"),
            "POST /v1/jobs": lambda: http.post("/v1/jobs", json={"model_id": model_id, "inputs": x}),
        }
        before = time_requests(args.samples, requests)
        pool = engine_for(service.settings.resolved_database_url).pool
        started = time.perf_counter()
        with open_streams(service.url, plan) as statuses:
            opened = time.perf_counter() - started
            in_use = []
            for _ in range(50):
                in_use.append(pool.checkedout())
                time.sleep(0.02)
            during = time_requests(args.samples, requests)
            with open_streams(service.url, [(t, j[0]) for t, _, j in owners]) as over:
                pass
        print(f"streams: {statuses}, all answered {opened:.1f} s after their process started; "
              f"one more per full key: {over}; "
              f"database connections checked out while they were open: max {max(in_use)}")
        print(f"\n{'request':<20}{'no streams':>22}{f'{args.streams} streams open':>26}")
        print(f"{'':<20}{'p50 ms':>11}{'p99 ms':>11}{'p50 ms':>13}{'p99 ms':>13}")
        for name in requests:
            (b50, b99), (d50, d99) = percentiles(before[name]), percentiles(during[name])
            print(f"{name:<20}{b50:>11.1f}{b99:>11.1f}{d50:>13.1f}{d99:>13.1f}")
        print(f"\nworst request with the streams open: {max(max(v) for v in during.values()) * 1e3:.0f} ms "
              f"(median of all: {statistics.median(t for v in during.values() for t in v) * 1e3:.1f} ms)")


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
