"""The floor: the cheapest service that keeps the product's promise, on the product's own stack.

Issue 15, item 11 asks whether a job durably stored before the 202 can reach
⅓ of bare Celery's throughput and 3× its one-at-a-time latency at all. This
module is the answer's other half: the same protocol with nothing else, run
by ``service_load.py`` in the same run as bare Celery and the service.

* API (its own uvicorn process, FastAPI, one event loop, no thread hop):
  compare the bearer token with the one it was given, parse the JSON inputs
  into an (n, 2) float array, INSERT the job and COMMIT (durable: a WAL
  flush), publish its Celery message, answer 202.
* Worker (the service's own ``qkan-orch worker``, which imports this module
  through ``--include``): claim the job (conditional UPDATE, COMMIT), compute
  its outputs with the model's torch forward (the numbers the ``exact``
  backend reproduces circuit by circuit), write the result and
  ``finished_at`` (UPDATE, COMMIT).

Three durable commits per job, as the service makes (insert, claim, finish);
raw psycopg, one connection per process. A job posted with ``?durable=false``
goes through connections with ``synchronous_commit=off`` (a commit returns
before its WAL flush): the same path without the disk's wait, so the bench
can tell what durability itself costs. Left out, because the protocol does
not need them to be durable: rate limits and active-job caps, model lookup and
validation, quotes and budgets, rounds, events, leases, the ORM and logging.
The compute is the least that gives the answer, not the service's circuits:
the service's per-round backend time is printed beside it.
"""

import asyncio
import contextlib
import hmac
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
import psycopg
import torch
from celery import shared_task
from fastapi import FastAPI, Header, HTTPException
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from qkan_orch.models import load_model
from qkan_orch.service.broker import celery_app
from qkan_orch.service.devstack import libpq_dsn
from qkan_orch.service.processes import free_port, start_child, stop_group, wait_for_api
from qkan_orch.service.settings import get_settings

TASK = "bench.floor_job"
SCHEMA = ("CREATE TABLE IF NOT EXISTS floor_jobs (id text PRIMARY KEY, inputs jsonb NOT NULL, state text NOT NULL, "
          "created_at timestamptz NOT NULL DEFAULT clock_timestamp(), started_at timestamptz, "
          "finished_at timestamptz, result jsonb)")
POOL_SIZE = 4  # connections of the API process per durability (the service's pool keeps 5)
NO_FLUSH = "-c synchronous_commit=off"  # libpq options of the connections for ?durable=false


@contextlib.contextmanager
def running_floor(env: dict[str, str], model_path: Path, log_file: Path) -> Iterator[tuple[httpx.Client,
                                                                                             subprocess.Popen]]:
    """The floor's table and API process (on the service's database and broker, ``env``), and a client with its
    token; the service's worker runs its task. The API is stopped on the way out."""
    dsn = libpq_dsn(env["QKAN_DATABASE_URL"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    token, url = secrets.token_urlsafe(16), f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "uvicorn", "floor_service:create_app", "--factory", "--host", "127.0.0.1",
            "--port", url.rsplit(":", 1)[1], "--log-level", "warning", "--no-access-log"]
    process = start_child(argv, {**env, "FLOOR_TOKEN": token, "FLOOR_MODEL": str(model_path)}, log_file)
    try:
        wait_for_api(url, check=lambda: _check_running(process, log_file))
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            yield client, process
    finally:
        stop_group(process)


def _check_running(process: subprocess.Popen, log_file: Path) -> None:
    if process.poll() is not None:
        raise RuntimeError(f"the floor API exited ({process.returncode}): {log_file.read_text()[-2000:]}")


def succeeded(database_url: str, job_ids: list[str]) -> int:
    """How many of the jobs the floor's database says succeeded with a result."""
    with psycopg.connect(libpq_dsn(database_url)) as conn:
        row = conn.execute("SELECT count(*) FROM floor_jobs WHERE id = ANY(%s) AND state = 'succeeded' "
                           "AND result IS NOT NULL", (job_ids,)).fetchone()
    return int(row[0]) if row else 0


# ---- worker half: one connection and one model per pool process, made after the fork

_connection: dict[tuple[int, bool], psycopg.Connection] = {}
_models: dict[str, torch.nn.Module] = {}


def _conn(durable: bool) -> psycopg.Connection:
    key = (os.getpid(), durable)
    if key not in _connection:
        _connection[key] = psycopg.connect(libpq_dsn(get_settings().resolved_database_url),
                                           options="" if durable else NO_FLUSH)
    return _connection[key]


@shared_task(name=TASK)
def floor_job(job_id: str, model_path: str, durable: bool = True) -> None:
    """Claim, compute, finish: two of the job's three commits."""
    conn = _conn(durable)
    row = conn.execute("UPDATE floor_jobs SET state = 'running', started_at = clock_timestamp() "
                       "WHERE id = %s AND state = 'queued' RETURNING inputs", (job_id,)).fetchone()
    conn.commit()
    if row is None:  # a duplicate message: the job is someone else's or done
        return
    if model_path not in _models:
        _models[model_path] = load_model(model_path)
    with torch.no_grad():
        outputs = _models[model_path](torch.as_tensor(row[0], dtype=torch.float32))
    conn.execute("UPDATE floor_jobs SET state = 'succeeded', finished_at = clock_timestamp(), result = %s "
                 "WHERE id = %s", (Jsonb(outputs.tolist()), job_id))
    conn.commit()


# ---- API half: ``uvicorn floor_service:create_app --factory`` with the service's QKAN_* settings, FLOOR_TOKEN and
# FLOOR_MODEL


class FloorJob(BaseModel):
    inputs: list[list[float]]


def create_app() -> FastAPI:
    settings = get_settings()
    dsn, broker = libpq_dsn(settings.resolved_database_url), celery_app(settings)
    token, model_path = os.environ["FLOOR_TOKEN"], os.environ["FLOOR_MODEL"]
    pools: dict[bool, asyncio.Queue[psycopg.AsyncConnection]] = {True: asyncio.Queue(), False: asyncio.Queue()}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for durable, pool in pools.items():
            for _ in range(POOL_SIZE):
                pool.put_nowait(await psycopg.AsyncConnection.connect(dsn, options="" if durable else NO_FLUSH))
        yield
        for pool in pools.values():
            while not pool.empty():
                await pool.get_nowait().close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/jobs", status_code=202)
    async def submit(body: FloorJob, authorization: Annotated[str, Header()] = "",
                     durable: bool = True) -> dict[str, str]:
        if not hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "send the bench's token")
        inputs = np.asarray(body.inputs, dtype=np.float64)
        if inputs.ndim != 2 or inputs.shape[1] != 2 or not np.isfinite(inputs).all():
            raise HTTPException(422, "inputs: rows of 2 finite numbers")
        job_id = str(uuid.uuid4())
        pool = pools[durable]
        conn = await pool.get()
        try:
            await conn.execute("INSERT INTO floor_jobs (id, inputs, state) VALUES (%s, %s, 'queued')",
                               (job_id, Jsonb(inputs.tolist())))
            await conn.commit()
        finally:
            pool.put_nowait(conn)
        broker.send_task(TASK, args=[job_id, model_path, durable], queue="local", task_id=job_id)
        return {"id": job_id}

    return app
