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

A job posted with ``?duties=true`` also does, in the same shape, what the
service owes every job beyond durability — the cheapest form of the service's
own work, to tell whether the service's design or its duties keep it from the
throughput goal:

* API: the key's request rate (the service's token bucket in Redis,
  ``RequestRates``), the model looked up (its owner and content hash read,
  its spec parsed once per hash, as ``store.models.model_spec``), the inputs
  checked against it and the run quoted (the service's own ``quote``: shots,
  mitigation, rounds, estimate), its active jobs (the key's row locked, its
  active jobs counted, in the insert's transaction, as ``check_active_jobs``),
  the job's row with the service's columns (queue, settings, estimate,
  mitigation, message id) and its inputs as safetensors (``pack_arrays``),
  the job's "queued" log line, and the job's document (``JobOut``) as the
  answer.
* Worker: the inputs unpacked, the answer computed by the service's own plan
  and ``exact`` backend round by round (``plan_for``, ``ExactBackend.submit``,
  ``absorb``), the result arrays the service keeps (outputs, stderr, every
  layer's outputs and activations) packed as safetensors, and a round row per
  round, the service's four events (running, one per round, succeeded) and a
  result row written with the job's end — one statement, autocommitted, whose
  inserts join the UPDATE that ends the job, so they happen only if it does.
  The claim is one autocommitted statement too, as the service's is, and
  takes a lease (owner token, expiry) that the job's end must present and
  clears; the lease is held in the process's keeper (a dict under a lock) for
  the step, and the step's "step done" line is logged with the job's id.

Still left out: the key lookup (a token compared, as the service's key cache
does after a key's first request), budgets and idempotency keys (the service
runs no statement for a key without a budget or a request without a key) and
the lease keeper's renewals (every third of a lease: none in a job of a few
ms). What remains between this floor and the service is the service's design,
not its duties: the ORM session, the thread hop, SQLAlchemy between the code
and the driver, the schema's further indexes.
"""

import asyncio
import contextlib
import hmac
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import numpy as np
import psycopg
import torch
from celery import shared_task
from fastapi import FastAPI, Header, HTTPException, Response
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from qkan_orch.backends import get_backend
from qkan_orch.backends.base import Estimate
from qkan_orch.backends.queues import queue_for
from qkan_orch.circuits import plan_for
from qkan_orch.models import Model, ModelSpec, load_model
from qkan_orch.service.api.quotes import RunSettings, quote, workload_of
from qkan_orch.service.api.rate_limits import RequestRates
from qkan_orch.service.api.schemas import EstimateOut, JobOut
from qkan_orch.service.broker import celery_app
from qkan_orch.service.devstack import libpq_dsn
from qkan_orch.service.job_logging import configure_api, job_context
from qkan_orch.service.processes import free_port, start_child, stop_group, wait_for_api
from qkan_orch.service.settings import get_settings
from qkan_orch.service.store.arrays import pack_arrays, unpack_arrays
from qkan_orch.service.store.models import model_digest
from qkan_orch.service.store.states import JobState
from qkan_orch.workers.inference_step import result_arrays

TASK = "bench.floor_job"
DUTIES_TASK = "bench.floor_job_with_duties"
MODEL_ID = "floor-model"  # the bench's one model row, the key's own
api_log, worker_log = logging.getLogger("qkan.api"), logging.getLogger("qkan.worker")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS floor_keys (id serial PRIMARY KEY, max_active_jobs integer NOT NULL);"
    "CREATE TABLE IF NOT EXISTS floor_models (id text PRIMARY KEY, owner_id integer REFERENCES floor_keys (id), "
    "content_hash text NOT NULL);"
    "CREATE TABLE IF NOT EXISTS floor_jobs (id text PRIMARY KEY, owner_id integer REFERENCES floor_keys (id), "
    "inputs jsonb, blob bytea, state text NOT NULL, created_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
    "started_at timestamptz, finished_at timestamptz, result jsonb, "
    # the service's other columns, filled by the duties path
    "kind text, model_id text REFERENCES floor_models (id), backend text, queue text, shots integer, pack integer, "
    "pack_auto boolean, options jsonb, request_hash text, rounds_total integer, rounds_done integer DEFAULT 0, "
    "samples integer, task_id text, estimate jsonb, mitigation jsonb, executions integer DEFAULT 0, "
    "lease_owner text, lease_until float8, updated_at timestamptz);"
    "CREATE INDEX IF NOT EXISTS ix_floor_jobs_owner_state ON floor_jobs (owner_id, state);"
    "CREATE TABLE IF NOT EXISTS floor_rounds (job_id text NOT NULL REFERENCES floor_jobs (id), "
    "number integer NOT NULL, rows integer NOT NULL, executions integer NOT NULL, seconds float8 NOT NULL, "
    "finished_at timestamptz NOT NULL, PRIMARY KEY (job_id, number));"
    "CREATE TABLE IF NOT EXISTS floor_events (id bigserial PRIMARY KEY, "
    "job_id text NOT NULL REFERENCES floor_jobs (id), kind text NOT NULL, at timestamptz NOT NULL, "
    "data jsonb NOT NULL);"
    "CREATE INDEX IF NOT EXISTS ix_floor_events_job ON floor_events (job_id, id);"
    "CREATE TABLE IF NOT EXISTS floor_results (job_id text PRIMARY KEY REFERENCES floor_jobs (id), "
    "arrays bytea NOT NULL, summary jsonb NOT NULL)"
)
# the service's claim: an active job nobody holds; a queued one starts running
CLAIM_WITH_LEASE = """
UPDATE floor_jobs SET lease_owner = %(token)s, lease_until = %(until)s, updated_at = clock_timestamp(),
    state = CASE WHEN state = 'queued' THEN 'running' ELSE state END,
    started_at = coalesce(started_at, clock_timestamp())
WHERE id = %(id)s AND state IN ('queued', 'running') AND lease_owner IS NULL
RETURNING blob, owner_id, kind, model_id, backend, shots, pack, pack_auto, options, rounds_done, rounds_total
"""
# the job's end with its round rows, events and result, releasing the lease: the inserts join the UPDATE, so a
# job that was not running under this lease (a duplicate message, a lease taken over) gets none of them; events
# keep their order (ordinality)
FINISH_WITH_DUTIES = """
WITH job AS (
    UPDATE floor_jobs SET state = 'succeeded', finished_at = clock_timestamp(), updated_at = clock_timestamp(),
        result = %(summary)s, rounds_done = %(rounds_done)s, executions = executions + %(executions)s,
        lease_owner = NULL, lease_until = NULL
    WHERE id = %(id)s AND state = 'running' AND lease_owner = %(token)s RETURNING id
), rounds AS (
    INSERT INTO floor_rounds (job_id, number, rows, executions, seconds, finished_at)
    SELECT job.id, r.number, r.rows, r.executions, r.seconds, r.finished_at FROM job,
        jsonb_to_recordset(%(rounds)s) AS r(number integer, rows integer, executions integer, seconds float8,
                                            finished_at timestamptz)
), events AS (
    INSERT INTO floor_events (job_id, kind, at, data)
    SELECT job.id, e.kind, e.at, e.data FROM job,
        ROWS FROM (jsonb_to_recordset(%(events)s) AS (kind text, at timestamptz, data jsonb)) WITH ORDINALITY
            AS e(kind, at, data, n)
    ORDER BY e.n
), result AS (
    INSERT INTO floor_results (job_id, arrays, summary) SELECT job.id, %(arrays)s, %(summary)s FROM job
)
SELECT id FROM job
"""
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

_connection: dict[tuple[int, bool, bool], psycopg.Connection] = {}
_models: dict[str, Model] = {}


def _conn(durable: bool, autocommit: bool = False) -> psycopg.Connection:
    key = (os.getpid(), durable, autocommit)
    if key not in _connection:
        _connection[key] = psycopg.connect(libpq_dsn(get_settings().resolved_database_url),
                                           options="" if durable else NO_FLUSH, autocommit=autocommit)
    return _connection[key]


def _model(path: str) -> Model:
    if path not in _models:
        _models[path] = load_model(path)
    return _models[path]


@shared_task(name=TASK)
def floor_job(job_id: str, model_path: str, durable: bool = True) -> None:
    """Claim, compute, finish: two of the job's three commits."""
    conn = _conn(durable)
    row = conn.execute("UPDATE floor_jobs SET state = 'running', started_at = clock_timestamp() "
                       "WHERE id = %s AND state = 'queued' RETURNING inputs", (job_id,)).fetchone()
    conn.commit()
    if row is None:  # a duplicate message: the job is someone else's or done
        return
    with torch.no_grad():
        outputs = _model(model_path)(torch.as_tensor(row[0], dtype=torch.float32))
    conn.execute("UPDATE floor_jobs SET state = 'succeeded', finished_at = clock_timestamp(), result = %s "
                 "WHERE id = %s", (Jsonb(outputs.tolist()), job_id))
    conn.commit()


@shared_task(name=DUTIES_TASK)
def floor_job_with_duties(job_id: str, model_path: str) -> None:
    """Claim and lease (one statement), run the service's plan on ``exact`` round by round, end the job with its
    rounds, events and result and release the lease (one statement): the job's second and third commits."""
    conn, token = _conn(True, autocommit=True), uuid.uuid4().hex
    row = conn.execute(CLAIM_WITH_LEASE, {"id": job_id, "token": token,
                                          "until": time.time() + get_settings().lease_seconds}).fetchone()
    if row is None:  # a duplicate message: the job is someone else's or done
        return
    with job_context(job_id), _held(job_id, token):
        plan = plan_for(_model(model_path), unpack_arrays(row[0])["inputs"])
        backend, state = get_backend("exact"), plan.initial_state()
        rounds: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = [_event("state", state="running")]
        while (batch := plan.next_batch(state)) is not None:
            began = time.perf_counter()
            result = backend.submit(batch).result
            assert result is not None  # a local backend answers at once
            state = plan.absorb(state, result)
            seconds = time.perf_counter() - began
            rounds.append({"number": len(rounds), "rows": batch.num_rows, "executions": result.executions,
                           "seconds": seconds, "finished_at": datetime.now(UTC).isoformat()})
            events.append(_event("round", round=state.rounds_done, of=plan.total_rounds, rows=batch.num_rows,
                                 executions=result.executions, seconds=round(seconds, 4)))
        arrays, summary = result_arrays(plan, state)
        events.append(_event("state", state="succeeded", **summary))
        conn.execute(FINISH_WITH_DUTIES, {"id": job_id, "token": token, "summary": Jsonb(summary),
                                          "rounds": Jsonb(rounds), "events": Jsonb(events),
                                          "arrays": pack_arrays(arrays), "rounds_done": state.rounds_done,
                                          "executions": sum(r["executions"] for r in rounds)})
        worker_log.info("step done; job ended")


_leases: dict[str, str] = {}  # the process's held leases (job id -> token), as the service's lease keeper holds them
_leases_lock = threading.Lock()


@contextlib.contextmanager
def _held(job_id: str, token: str) -> Iterator[None]:
    with _leases_lock:
        _leases[job_id] = token
    try:
        yield
    finally:
        with _leases_lock:
            _leases.pop(job_id, None)


def _event(kind: str, **data: Any) -> dict[str, Any]:
    return {"kind": kind, "at": datetime.now(UTC).isoformat(), "data": data}


# ---- API half: ``uvicorn floor_service:create_app --factory`` with the service's QKAN_* settings, FLOOR_TOKEN and
# FLOOR_MODEL


class FloorJob(BaseModel):
    inputs: list[list[float]]


@dataclass(frozen=True)
class FloorKey:
    """The bench's key: its Redis bucket name (``id``), its row in floor_keys and its limits."""

    id: str
    row: int
    rate_limit: float
    max_active_jobs: int
    max_shots: int | None = None  # no budget: the quote runs no statement for it, as for such a key of the service
    max_cost: float | None = None


async def _insert_with_duties(conn: psycopg.AsyncConnection, key: FloorKey, job: dict[str, Any]) -> None:
    """The key's row locked and its active jobs counted (two statements: the count needs a snapshot taken after
    the lock), then the job's row; the caller commits."""
    await conn.execute("SELECT id FROM floor_keys WHERE id = %s FOR UPDATE", (key.row,))
    cursor = await conn.execute("SELECT count(*) FROM floor_jobs WHERE owner_id = %s AND state IN ('queued', "
                                "'running')", (key.row,))
    active = (await cursor.fetchone() or (0,))[0]
    if active + 1 > key.max_active_jobs:
        raise HTTPException(429, "too many active jobs")
    await conn.execute(INSERT_WITH_DUTIES, job)


INSERT_WITH_DUTIES = """
INSERT INTO floor_jobs (id, owner_id, blob, state, kind, model_id, backend, queue, shots, pack, pack_auto, options,
    request_hash, rounds_total, samples, task_id, estimate, mitigation, created_at, updated_at)
VALUES (%(id)s, %(owner_id)s, %(blob)s, 'queued', 'inference', %(model_id)s, %(backend)s, %(queue)s, %(shots)s,
    %(pack)s, %(pack_auto)s, %(options)s, '', %(rounds_total)s, %(samples)s, %(task_id)s, %(estimate)s,
    %(mitigation)s, %(created_at)s, %(created_at)s)
"""


async def _spec(conn: psycopg.AsyncConnection, key: FloorKey, model_id: str, specs: dict[str, ModelSpec],
                model_path: str) -> ModelSpec:
    """The model's spec if the key owns it (404 if not), parsed once per content hash, as ``model_spec``."""
    cursor = await conn.execute("SELECT owner_id, content_hash FROM floor_models WHERE id = %s", (model_id,))
    row = await cursor.fetchone()
    if row is None or row[0] != key.row:
        raise HTTPException(404, "no such model")
    if row[1] not in specs:
        specs[row[1]] = load_model(model_path).spec
    return specs[row[1]]


def _job_document(job: dict[str, Any], estimate: Estimate) -> str:
    """The 202's body: the service's job document of a queued job."""
    return JobOut(
        id=job["id"], kind="inference", model_id=job["model_id"], backend=job["backend"], queue=job["queue"],
        state=JobState.QUEUED, rounds_done=0, rounds_total=job["rounds_total"], samples=job["samples"],
        shots=job["shots"], pack=None, options={}, estimate=EstimateOut(**asdict(estimate)), placement=None,
        mitigation=job["mitigation"].obj, shots_used=0, executions=0, provider_job_ids=[],
        created_at=job["created_at"], started_at=None, finished_at=None, queued_seconds=None, run_seconds=None,
        error=None, rounds=[],
    ).model_dump_json()


@asynccontextmanager
async def _pooled(pool: asyncio.Queue[psycopg.AsyncConnection]) -> AsyncIterator[psycopg.AsyncConnection]:
    """A pooled connection whose transaction commits when the block ends, or rolls back if it raises."""
    conn = await pool.get()
    try:
        yield conn
        await conn.commit()
    except BaseException:
        await conn.rollback()
        raise
    finally:
        pool.put_nowait(conn)


def create_app() -> FastAPI:
    settings = get_settings()
    dsn, broker = libpq_dsn(settings.resolved_database_url), celery_app(settings)
    token, model_path = os.environ["FLOOR_TOKEN"], os.environ["FLOOR_MODEL"]
    pools: dict[bool, asyncio.Queue[psycopg.AsyncConnection]] = {True: asyncio.Queue(), False: asyncio.Queue()}
    keys: list[FloorKey] = []  # the bench's one key, made at start-up
    specs: dict[str, ModelSpec] = {}  # parsed specs by content hash
    rates = RequestRates(settings)
    configure_api(settings.log_level)  # the "queued" line, as the service's API logs it

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for durable, pool in pools.items():
            for _ in range(POOL_SIZE):
                pool.put_nowait(await psycopg.AsyncConnection.connect(dsn, options="" if durable else NO_FLUSH))
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cursor = await conn.execute("INSERT INTO floor_keys (max_active_jobs) VALUES (%s) RETURNING id",
                                        (10**6,))
            key_id = (await cursor.fetchone() or (0,))[0]
            await conn.execute("INSERT INTO floor_models (id, owner_id, content_hash) VALUES (%s, %s, %s)",
                               (MODEL_ID, key_id, model_digest(load_model(model_path))))
        keys.append(FloorKey(id=f"floor-{key_id}", row=key_id, rate_limit=1e6, max_active_jobs=10**6))
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
                     durable: bool = True, duties: bool = False) -> Response:
        if not hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "send the bench's token")
        if duties:
            return await submit_with_duties(keys[0], np.asarray(body.inputs, dtype=np.float64))
        inputs = np.asarray(body.inputs, dtype=np.float64)
        if inputs.ndim != 2 or inputs.shape[1] != 2 or not np.isfinite(inputs).all():
            raise HTTPException(422, "inputs: rows of 2 finite numbers")
        job_id = str(uuid.uuid4())
        async with _pooled(pools[durable]) as conn:
            await conn.execute("INSERT INTO floor_jobs (id, inputs, state) VALUES (%s, %s, 'queued')",
                               (job_id, Jsonb(inputs.tolist())))
        broker.send_task(TASK, args=[job_id, model_path, durable], queue="local", task_id=job_id)
        return Response(json.dumps({"id": job_id}), 202, media_type="application/json")

    async def submit_with_duties(key: FloorKey, inputs: np.ndarray) -> Response:
        await rates.take(key)  # type: ignore[arg-type]  # reads id and rate_limit, as of an ApiKey
        async with _pooled(pools[True]) as conn:
            spec = await _spec(conn, key, MODEL_ID, specs, model_path)
            work = workload_of(spec, settings, MODEL_ID, len(inputs), inputs)
            quoted = quote(None, settings, key, work,  # type: ignore[arg-type]  # no budget: no statement
                           RunSettings("exact", None, None, {}, None))
            assert work.inputs is not None
            job_id = str(uuid.uuid4())  # its message's id too: the bench follows a floor job by its task's events
            job = {"id": job_id, "owner_id": key.row, "blob": pack_arrays({"inputs": work.inputs}),
                   "model_id": MODEL_ID, "backend": "exact", "queue": queue_for("exact"), "shots": quoted.shots,
                   "pack": None, "pack_auto": False, "options": Jsonb({}), "rounds_total": len(work.rows),
                   "samples": len(work.inputs), "task_id": job_id,
                   "estimate": Jsonb(asdict(quoted.estimate)), "mitigation": Jsonb(quoted.mitigation.to_json()),
                   "created_at": datetime.now(UTC)}
            await _insert_with_duties(conn, key, job)
        broker.send_task(DUTIES_TASK, args=[job["id"], model_path], queue=job["queue"], task_id=job["task_id"])
        with job_context(job["id"]):
            e = quoted.estimate
            api_log.info("queued: %d samples on %s, %d rounds, ≤ %d executions, ≤ USD %.2f", len(work.inputs),
                         "exact", len(work.rows), e.executions, e.cost)
        return Response(_job_document(job, quoted.estimate), 202, media_type="application/json",
                        headers={"Location": f"/v1/jobs/{job['id']}"})

    return app
