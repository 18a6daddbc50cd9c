"""/v1/queues: what the dashboard draws — queue depths, live workers, throughput."""

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from qkan_orch.service.api.deps import BrokerDep, KeyDep, SessionDep
from qkan_orch.service.api.errors import ERROR_RESPONSES
from qkan_orch.service.api.schemas import QueueOut, QueuesOut
from qkan_orch.service.api.worker_census import inspect_workers
from qkan_orch.service.broker import queue_depths
from qkan_orch.service.store import jobs as store

router = APIRouter(prefix="/v1/queues", tags=["queues"], responses=ERROR_RESPONSES)


@router.get("", response_model=QueuesOut, summary="Queue depth, live workers, jobs finished in the last minute")
async def queues(_: KeyDep, session: SessionDep, broker: BrokerDep) -> QueuesOut:
    depths = await run_in_threadpool(queue_depths, broker)
    workers = await run_in_threadpool(inspect_workers, broker)
    return QueuesOut(
        queues=[QueueOut(name=n, depth=d) for n, d in depths.items()],
        workers=workers,
        jobs_by_state=store.counts_by_state(session),
        finished_last_minute=store.finished_since(session, 60.0),
    )
