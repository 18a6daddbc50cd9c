"""Workers die and providers keep jobs waiting: the service must neither lose nor repeat work."""

import json
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_inputs, make_model
from qkan_orch.client import Client, JobState
from qkan_orch.models import save_model
from qkan_orch.service.local import LocalService
from service_env import stack_env

pytestmark = pytest.mark.usefixtures("plugin_backends")


@pytest.fixture(params=["system-redis+postgresql", "embedded-redis+sqlite"])
def single_worker(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A service whose only worker runs one task at a time."""
    with stack_env(request.param, tmp_path) as env:
        service = LocalService(tmp_path, env, concurrency=1)
        service.start(workers=1)
        try:
            with Client(service.url, service.create_key()) as qc:
                model = make_model(width=[2, 3, 3, 1], reps=2).float()
                save_model(model, str(tmp_path / "m.safetensors"))
                yield service, qc, qc.upload_model(tmp_path / "m.safetensors").id
        finally:
            service.stop()


def wait_for(predicate, timeout: float = 60.0, every: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)
    return value


def test_a_worker_killed_between_rounds_is_resumed_without_repeating_a_round(single_worker, tmp_path: Path) -> None:
    service, qc, model_id = single_worker
    x = make_inputs(12, 2)
    reference = qc.wait(qc.submit(model_id, x).id, timeout=60, progress=False)
    want, _ = qc.result(reference.id)

    log = tmp_path / "rounds.log"
    # round 2 takes 1.5 s: the kill lands before it writes anything; rounds 1 and 3 need no delay
    job = qc.submit(model_id, x, backend="test:counting", options={"delay": [0.2, 1.5, 0.2], "log": str(log)})
    wait_for(lambda: qc.status(job.id).rounds_done == 1)
    service.kill_worker(service.workers[0])  # SIGKILL while round 2 is starting: nothing acknowledged
    status = qc.status(job.id)
    assert status.state == JobState.RUNNING and status.rounds_done == 1
    assert len(log.read_text().splitlines()) == 1

    service.start_worker()
    final = qc.wait(job.id, timeout=120, progress=False)
    assert final.state == JobState.SUCCEEDED, final.error
    got, _ = qc.result(job.id)
    assert np.array_equal(got, want)
    rounds = log.read_text().splitlines()
    assert len(rounds) == 3 and len(set(rounds)) == 3  # the backend saw each round exactly once
    assert [r.number for r in final.rounds] == [0, 1, 2]


def test_a_job_waiting_on_its_provider_does_not_hold_the_worker(single_worker, tmp_path: Path) -> None:
    _, qc, model_id = single_worker
    log = tmp_path / "pending.log"
    # 15 polls (4.5 s at QKAN_POLL_INTERVAL 0.3 s) keep round 1 at its provider while the quick jobs run (they take
    # ~0.3 s); rounds 2 and 3 come after that check and wait 2 polls each, not 15 again (~8 s less per stack)
    slow = qc.submit(model_id, make_inputs(4, 2), backend="test:pending",
                     options={"pending_polls": 15, "later_polls": 2, "log": str(log)})
    wait_for(lambda: qc.status(slow.id).state == JobState.WAITING_ON_PROVIDER)
    quick = [qc.submit(model_id, make_inputs(3, 2, seed=k)) for k in range(5)]
    for job in quick:
        assert qc.wait(job.id, timeout=60, progress=False).state == JobState.SUCCEEDED
    assert qc.status(slow.id).state == JobState.WAITING_ON_PROVIDER  # still queued at its provider
    final = qc.wait(slow.id, timeout=120, progress=False)
    assert final.state == JobState.SUCCEEDED and final.rounds_done == 3
    polls = [json.loads(line)["job"] for line in Path(str(log) + ".polls").read_text().splitlines()]
    per_round = [polls.count(job) for job in dict.fromkeys(polls)]
    assert len(per_round) == 3 and per_round[0] >= 15 + 1 and all(n >= 2 + 1 for n in per_round[1:]), per_round
    # every round was polled until its provider finished, each poll a short task
