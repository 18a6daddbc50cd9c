"""GET /v1/jobs runs a fixed number of SQL statements however many jobs its page holds (issue 12 acceptance): the
count, the jobs and all their rounds are a query each, never one per job. The dashboard's Jobs page lists
hundreds at a time.

The API is built in-process (``create_app`` with FastAPI's TestClient) on SQLite and on PostgreSQL; listing
needs no broker, so the Celery app is never connected. The jobs are inserted directly, as the API would store
them (``job_records.new_job``), some with rounds and some failed.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from qkan_orch.service.api.app import create_app
from qkan_orch.service.api.job_records import new_job
from qkan_orch.service.broker import celery_app
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.database import engine_for, session_scope, upgrade
from qkan_orch.service.store.keys import create_key
from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import Round
from service_env import postgres_url

JOBS = 500


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'qkan.db'}"
    else:
        with postgres_url() as url:
            yield url


def stored_jobs(url: str) -> str:
    """A key owning ``JOBS`` jobs: every third succeeded after two rounds, others failed or queued (a queued
    job has no rounds to read); returns its token."""
    upgrade(url)
    with session_scope(url) as session:
        key, token = create_key(session, "lister")
        for n in range(JOBS):
            job = new_job(key, kind="inference", model_id=None, backend="aer", shots=100, pack=None, options={},
                          arrays={"inputs": np.zeros((2, 2))}, rounds_total=2)
            session.add(job)
            if n % 3 == 0:
                job.state, job.rounds_done = JobState.SUCCEEDED, 2
                session.add_all(Round(job_id=job.id, number=k, rows=4, requested=8, provider_job_ids=[f"p{n}.{k}"])
                                for k in range(2))
            elif n % 7 == 0:
                job.state, job.error_code, job.error_message = JobState.FAILED, "backend_error", "it broke"
    return token


def test_listing_500_jobs_runs_as_many_queries_as_listing_5(database: str) -> None:
    token = stored_jobs(database)
    settings = Settings(database_url=database, redis_url="redis://unused")
    api = TestClient(create_app(settings, celery=celery_app(settings)), headers={"Authorization": f"Bearer {token}"})
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    def listed(limit: int) -> tuple[dict, int]:
        statements.clear()
        response = api.get("/v1/jobs", params={"limit": limit})
        assert response.status_code == 200, response.text
        return response.json(), len(statements)

    api.get("/v1/jobs", params={"limit": 1})  # the key is looked up once, then cached: not part of a listing
    event.listen(engine_for(database), "before_cursor_execute", count)
    try:
        few, few_queries = listed(5)
        page, page_queries = listed(JOBS)
    finally:
        event.remove(engine_for(database), "before_cursor_execute", count)
    assert len(few["items"]) == 5 and len(page["items"]) == page["total"] == JOBS
    assert sum(len(job["rounds"]) for job in page["items"]) == 2 * len(range(0, JOBS, 3))  # the rounds are there
    assert sum(job["error"] is not None for job in page["items"]) == sum(n % 3 != 0 and n % 7 == 0 for n in range(JOBS))
    assert page_queries == few_queries <= 6, statements
