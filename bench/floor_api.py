"""The floor's API half (``uvicorn floor_api:create_app --factory``, started by ``floor_service.running_floor``
with the service's QKAN_* settings, FLOOR_TOKEN and FLOOR_MODEL): one event loop, raw async psycopg, no thread
hop. What it does and leaves out is in ``floor_service``'s docstring."""

import asyncio
import hmac
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import psycopg
from fastapi import FastAPI, Header, HTTPException, Response
from floor_service import DUTIES_TASK, NO_FLUSH, TASK
from psycopg.types.json import Jsonb
from pydantic import BaseModel

from qkan_orch.backends.base import Estimate
from qkan_orch.backends.queues import queue_for
from qkan_orch.models import ModelSpec, load_model
from qkan_orch.service.api.quotes import RunSettings, quote, workload_of
from qkan_orch.service.api.rate_limits import RequestRates
from qkan_orch.service.api.schemas import EstimateOut, JobOut
from qkan_orch.service.broker import celery_app
from qkan_orch.service.devstack import libpq_dsn
from qkan_orch.service.job_logging import configure_api, job_context
from qkan_orch.service.settings import get_settings
from qkan_orch.service.store.arrays import pack_arrays
from qkan_orch.service.store.models import cached_spec, model_digest
from qkan_orch.service.store.states import JobState

MODEL_ID = "floor-model"  # the bench's one model row, the key's own
POOL_SIZE = 4  # connections of the API process per durability (the service's pool keeps 5)
api_log = logging.getLogger("qkan.api")


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


async def _spec(conn: psycopg.AsyncConnection, key: FloorKey, model_id: str, model_path: str) -> ModelSpec:
    """The model's spec if the key owns it (404 if not), from the service's own cache by content hash, as
    ``store.models.model_spec``."""
    cursor = await conn.execute("SELECT owner_id, content_hash FROM floor_models WHERE id = %s", (model_id,))
    row = await cursor.fetchone()
    if row is None or row[0] != key.row:
        raise HTTPException(404, "no such model")
    return cached_spec(row[1], lambda: load_model(model_path).spec)


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
        inputs = np.asarray(body.inputs, dtype=np.float64)
        if duties:
            return await submit_with_duties(keys[0], inputs)
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
            spec = await _spec(conn, key, MODEL_ID, model_path)
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
