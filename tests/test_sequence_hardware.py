"""A QKAN-LSTM through the service on fake hardware (issue 13): a window of T = 8 steps is 8 rounds and 8
provider submissions, counted inside the worker on the real simulator (support/submission_spy.py), with
read-out mitigation, even though the worker is SIGKILLed between steps 3 and 4: it is replaced and the job
resumes with every step submitted exactly once (one run shows both: a repeated or a lost step would break
the count of eight).

One window keeps a step at 24 circuits (4 gates × 3 inputs × 2 hidden units), within the first chunk of a
local round (backends/chunked_rounds.py), so Aer sees one submission per step as a provider would.
Real service: system Redis, PostgreSQL, one supervised Celery worker process with one task at a time.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_sequence_plan import sequence_model, windows
from test_service_recovery import wait_for

from qkan_orch.client import Client, JobState
from qkan_orch.models import save_model
from qkan_orch.service.local import LocalService
from service_env import stack_env
from support.submission_spy import submissions

STEPS = 8
BACKENDS = ("aer:fake_melbourne", "ibm:fake_torino")


@pytest.fixture(scope="module")
def spy_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spy") / "submissions.log"


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, spy_log: Path) -> Iterator[LocalService]:
    tmp = tmp_path_factory.mktemp("sequence-hardware")
    with stack_env("system-redis+postgresql", tmp) as env:
        service = LocalService(tmp, {**env, "QKAN_TEST_SUBMISSIONS": str(spy_log)}, concurrency=1,
                               worker_include="support.submission_spy")
        with service:
            yield service


@pytest.fixture(scope="module")
def qc(svc: LocalService) -> Iterator[Client]:
    with Client(svc.url, svc.create_key("sequence-hardware")) as client:
        yield client


@pytest.fixture(scope="module")
def model_id(qc: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("model") / "qkan-lstm.safetensors"
    save_model(sequence_model(window=STEPS, in_dim=1, hidden=2, reps=2), str(path))
    return qc.upload_model(path).id


@pytest.fixture
def log(spy_log: Path) -> Path:
    spy_log.unlink(missing_ok=True)
    return spy_log


def run_window(qc: Client, model_id: str, backend: str) -> str:
    job = qc.submit(model_id, windows(1, STEPS, 1), backend=backend, shots=2000, pack=4, mitigation="readout",
                    options={"seed": 11})
    assert job.rounds_total == STEPS
    return job.id


def assert_each_step_submitted_once(qc: Client, job_id: str, log: Path, backend: str) -> None:
    final = qc.wait(job_id, timeout=300, progress=False)
    assert final.state == JobState.SUCCEEDED, final.error
    assert [r.number for r in final.rounds] == list(range(STEPS))
    if backend.startswith("ibm:"):  # a Runtime job per step; a local simulator's runs have no job ids
        assert all(len(r.provider_job_ids) == 1 for r in final.rounds)
        assert len(set(final.provider_job_ids)) == STEPS
    seen = submissions(log)
    assert [s["backend"] for s in seen] == [backend] * STEPS
    assert len({s["batch"] for s in seen}) == STEPS  # eight different steps, none sent twice
    outputs, stderr = qc.result(job_id)
    assert np.isfinite(outputs).all() and (np.asarray(stderr) > 0).all()
    assert qc.job_result(job_id).raw_outputs is not None  # mitigated: the raw reading is kept beside it


@pytest.mark.parametrize("backend", BACKENDS)
def test_eight_steps_are_eight_submissions_also_when_the_worker_is_killed_between_steps_3_and_4(
        svc: LocalService, qc: Client, model_id: str, log: Path, backend: str) -> None:
    Path(f"{log}.pause").write_text(json.dumps({"at": 3, "seconds": 30}))
    job_id = run_window(qc, model_id, backend)
    wait_for(lambda: Path(f"{log}.paused").exists(), timeout=180)  # step 4 is about to be sent: nothing in flight
    Path(f"{log}.paused").unlink()
    svc.kill_worker(svc.workers[0])
    status = qc.status(job_id)
    assert status.state == JobState.RUNNING and status.rounds_done == 3
    assert len(submissions(log)) == 3
    assert_each_step_submitted_once(qc, job_id, log, backend)  # the supervisor's new worker finishes the job
