"""500 jobs submitted at once all finish, each exactly once, with their own outputs."""

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from conftest import make_inputs, make_model
from qkan_orch.client import Client, JobState
from qkan_orch.models import save_model
from qkan_orch.service.local import LocalService
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.tables import Job, Round
from service_env import stack_env

JOBS = 500
# One key submits all 500 at once, as fast as 16 threads can: over the default per-key limits (20 requests/s,
# 200 active jobs), which this test is not about (tests/test_key_limits.py is).
LOAD_LIMITS = {"QKAN_RATE_LIMIT_PER_SECOND": "100000", "QKAN_MAX_ACTIVE_JOBS_PER_KEY": str(JOBS)}


@pytest.mark.parametrize("stack", ["system-redis+postgresql", "embedded-redis+sqlite"])
def test_500_concurrent_jobs_finish_once_each(stack: str, tmp_path: Path) -> None:
    model = make_model(width=[2, 2, 1], reps=1).float()
    save_model(model, str(tmp_path / "m.safetensors"))
    inputs = [make_inputs(2, 2, seed=k) for k in range(JOBS)]
    with stack_env(stack, tmp_path) as env, LocalService(tmp_path, {**env, **LOAD_LIMITS}, concurrency=2) as service, \
            Client(service.url, service.create_key()) as qc:
        model_id = qc.upload_model(tmp_path / "m.safetensors").id
        with ThreadPoolExecutor(16) as pool:
            ids = list(pool.map(lambda x: qc.submit(model_id, x).id, inputs))
        assert len(set(ids)) == JOBS

        deadline = time.monotonic() + 300
        while qc.jobs(state=JobState.SUCCEEDED, limit=1).total < JOBS:
            assert qc.jobs(state=JobState.FAILED, limit=1).total == 0
            assert time.monotonic() < deadline, f"{qc.jobs(state=JobState.SUCCEEDED, limit=1).total} of {JOBS} done"
            time.sleep(0.5)

        with ThreadPoolExecutor(8) as pool:
            outputs = list(pool.map(lambda job_id: qc.result(job_id)[0], ids))
        with torch.no_grad():
            want = [model(torch.from_numpy(x).float()).numpy() for x in inputs]
        assert all(np.allclose(got, exp, atol=1e-6) for got, exp in zip(outputs, want, strict=True))
        with session_scope(service.settings.resolved_database_url) as session:
            assert session.scalar(select(func.count()).select_from(Job)) == JOBS
            per_job = session.execute(select(Round.job_id, func.count()).group_by(Round.job_id)).all()
        assert len(per_job) == JOBS and all(count == 2 for _, count in per_job)
