"""The floor: the cheapest service that keeps the product's promise, on the product's own stack.

Issue 15, item 11 asks whether a job durably stored before the 202 can reach
⅓ of bare Celery's throughput and 3× its one-at-a-time latency at all. This
module is the answer's other half: the same protocol with nothing else, run
by ``service_load.py`` in the same run as bare Celery and the service.

* API (``floor_api.py``: its own uvicorn process, FastAPI, one event loop, no
  thread hop):
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

import contextlib
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import torch
from celery import shared_task
from psycopg.types.json import Jsonb

from qkan_orch.backends import get_backend
from qkan_orch.circuits import plan_for
from qkan_orch.models import Model, load_model
from qkan_orch.service.devstack import libpq_dsn
from qkan_orch.service.job_logging import job_context
from qkan_orch.service.processes import free_port, start_child, stop_group, wait_for_api
from qkan_orch.service.settings import get_settings
from qkan_orch.service.store.arrays import pack_arrays, unpack_arrays
from qkan_orch.workers.inference_step import result_arrays

TASK = "bench.floor_job"
DUTIES_TASK = "bench.floor_job_with_duties"
worker_log = logging.getLogger("qkan.worker")
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
NO_FLUSH = "-c synchronous_commit=off"  # libpq options of the connections for ?durable=false


@contextlib.contextmanager
def running_floor(env: dict[str, str], model_path: Path, log_file: Path) -> Iterator[tuple[httpx.Client,
                                                                                             subprocess.Popen]]:
    """The floor's tables and its API process (``floor_api``, on the service's database and broker, ``env``), and a
    client with its token; the service's worker runs its tasks. The API is stopped on the way out."""
    dsn = libpq_dsn(env["QKAN_DATABASE_URL"])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    token, url = secrets.token_urlsafe(16), f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "uvicorn", "floor_api:create_app", "--factory", "--host", "127.0.0.1",
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
