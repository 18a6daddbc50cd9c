"""The broker or the database goes away mid-job and comes back: every job finishes, no round runs twice.

Real processes on servers this module owns (the machine's shared Redis and
PostgreSQL are never restarted): a private redis-server as the production
broker (as in the compose deployment, not the embedded one ``serve``
supervises), a private PostgreSQL cluster, two worker processes running one
task each, and the API on a thread of this process. Local rounds run on
``test:counting``, whose log says how often each round ran; provider rounds on
``test:unsteady`` (without failures: ``test:pending`` with a log of its
submissions), whose log says how often each round went to the provider.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import make_inputs, make_model
from qkan_orch.client import Client, JobState
from qkan_orch.models import save_model
from qkan_orch.service.local import LocalService
from qkan_orch.service.processes import wait_until
from service_env import FAST
from support.private_servers import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.usefixtures("plugin_backends")

BROKER_GAP, DATABASE_GAP = 10.0, 15.0  # seconds each server stays away
ROUNDS = 3
# A hang detector, not a speed bound: an API waiting on a dead server waits for minutes (TCP); an answer within
# 15 s on any machine, however loaded, shows it did not wait on the server at all.
HANG_SECONDS = 15.0


@dataclass
class Stack:
    service: LocalService
    redis: PrivateRedis
    postgres: PrivatePostgres
    client: Client
    token: str
    model_id: str
    inputs: np.ndarray
    want: np.ndarray  # the exact outputs for ``inputs``


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("restarts")
    redis, postgres = PrivateRedis(tmp / "redis"), PrivatePostgres()
    service = LocalService(tmp, {**FAST, "QKAN_REDIS_URL": redis.url, "QKAN_DATABASE_URL": postgres.url},
                           concurrency=1)
    try:
        redis.start()
        postgres.start()
        service.start(workers=2)
        token = service.create_key("restarts")
        with Client(service.url, token) as client:
            save_model(make_model(width=[2, 2, 2, 1], reps=1).float(), str(tmp / "m.safetensors"))  # three rounds
            model_id = client.upload_model(tmp / "m.safetensors").id
            inputs = make_inputs(4, 2)
            reference = client.wait(client.submit(model_id, inputs).id, timeout=60, progress=False)
            want, _ = client.result(reference.id)
            yield Stack(service, redis, postgres, client, token, model_id, inputs, want)
    finally:
        service.stop()
        redis.kill()
        postgres.remove()


def submit_counting(stack: Stack, log: Path, delay: list[float]) -> str:
    return stack.client.submit(stack.model_id, stack.inputs, backend="test:counting",
                               options={"delay": delay, "log": str(log)}).id


def submit_provider(stack: Stack, log: Path, polls: int) -> str:
    """A provider job whose rounds stay pending for ``polls`` polls each; ``log``.submits logs its submissions."""
    return stack.client.submit(stack.model_id, stack.inputs, backend="test:unsteady",
                               options={"pending_polls": polls, "log": str(log)}).id


def in_round_2(stack: Stack, job_id: str) -> bool:
    """Round 1 is written and round 2 under way on a worker."""
    status = stack.client.status(job_id)
    return status.rounds_done == 1 and status.state == JobState.RUNNING


def wait_for(stack: Stack, what: str, ready) -> None:  # type: ignore[no-untyped-def]
    wait_until(ready, what, 60, interval=0.05)


def raw_submit(stack: Stack) -> httpx.Response:
    return httpx.post(f"{stack.service.url}/v1/jobs", headers={"Authorization": f"Bearer {stack.token}"},
                      json={"model_id": stack.model_id, "inputs": stack.inputs.tolist()}, timeout=HANG_SECONDS)


def assert_done_once(stack: Stack, job_id: str, runs: Path) -> list[str]:
    """The job succeeded with the exact outputs, one round row per round, and ``runs`` — the rounds its local
    backend ran, or submitted to its provider — names each round once. Returns the job's event kinds."""
    final = stack.client.wait(job_id, timeout=120, progress=False)
    assert final.state == JobState.SUCCEEDED, final.error
    got, _ = stack.client.result(job_id)
    assert np.array_equal(got, stack.want)
    assert [r.number for r in final.rounds] == list(range(ROUNDS))
    ran = runs.read_text().splitlines()
    assert len(ran) == ROUNDS and len(set(ran)) == ROUNDS, ran
    return [kind for kind, _ in stack.client.events(job_id)]


@pytest.mark.parametrize("keep_data", [True, False], ids=["with-its-data", "without-its-data"])
def test_a_broker_restart_loses_no_job_and_runs_no_round_twice(stack: Stack, tmp_path: Path,
                                                               keep_data: bool) -> None:
    """Stop (SIGTERM), 10 s away, start — with its append-only file, or with none (every queued and unacked
    message lost) — while one job waits on its provider, two run local rounds on both workers and two are
    queued behind them. Submissions meanwhile are refused with 503 and store nothing; afterwards every job
    succeeds with each round run once. Without its data, the jobs whose messages were lost are re-enqueued by
    the sweeper (``message_lost``)."""
    client = stack.client
    waiting = submit_provider(stack, tmp_path / "waiting.log", polls=6)
    wait_for(stack, "the provider job", lambda: client.status(waiting).state == JobState.WAITING_ON_PROVIDER)
    # round 2 takes 3 s on each worker: both are busy when the broker stops, and finish it while it is away
    running = {f"running-{k}": submit_counting(stack, tmp_path / f"running-{k}.log", [0.2, 3, 0.2]) for k in (1, 2)}
    for job_id in running.values():
        wait_for(stack, "round 2 of a local job", lambda job_id=job_id: in_round_2(stack, job_id))
    queued = {f"queued-{k}": submit_counting(stack, tmp_path / f"queued-{k}.log", [0.2]) for k in (1, 2)}
    assert [client.status(j).state for j in queued.values()] == [JobState.QUEUED] * 2
    assert client.status(waiting).state == JobState.WAITING_ON_PROVIDER
    jobs_before = len(client.jobs().items)

    stack.redis.stop()
    stopped = time.monotonic()
    refused = raw_submit(stack)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "broker_unavailable", refused.text
    assert refused.headers["Retry-After"] == "5"
    assert len(client.jobs().items) == jobs_before  # the refused submission left no job behind
    time.sleep(max(0.0, BROKER_GAP - (time.monotonic() - stopped)))
    if not keep_data:
        stack.redis.forget()
    stack.redis.start()

    kinds = {name: assert_done_once(stack, job_id, tmp_path / f"{name}.log")
             for name, job_id in {**running, **queued}.items()}
    kinds["waiting"] = assert_done_once(stack, waiting, tmp_path / "waiting.log.submits")
    if not keep_data:  # their messages were in Redis only: nothing but the sweeper could send them again
        for name in ("waiting", *queued):
            assert "message_lost" in kinds[name], (name, kinds[name])
    accepted = raw_submit(stack)  # the API publishes again without being restarted
    assert accepted.status_code == 202, accepted.text
    assert client.wait(accepted.json()["id"], timeout=60, progress=False).state == JobState.SUCCEEDED


def test_a_database_restart_mid_job_loses_no_result_and_submits_no_round_twice(stack: Stack,
                                                                              tmp_path: Path) -> None:
    """``pg_ctl stop -m immediate`` (every connection dies) while one job waits on its provider and another
    runs a local round, 15 s away, then start. Meanwhile the API answers 503 ``database_unavailable`` with
    Retry-After, status and submissions alike; the local round that ends in the outage is written when the
    database is back, by the worker that ran it (its lease is not taken over), and not run again; the provider
    job's next rounds are submitted once each. The API needs no restart."""
    client = stack.client
    waiting = submit_provider(stack, tmp_path / "waiting.log", polls=3)
    wait_for(stack, "the provider job", lambda: client.status(waiting).state == JobState.WAITING_ON_PROVIDER)
    running = submit_counting(stack, tmp_path / "running.log", [0.2, 4, 0.2])  # round 2 ends in the outage
    wait_for(stack, "round 2 of the local job", lambda: in_round_2(stack, running))

    stack.postgres.stop()
    stopped = time.monotonic()
    headers = {"Authorization": f"Bearer {stack.token}"}
    for answer in (httpx.get(f"{stack.service.url}/v1/jobs/{running}", headers=headers, timeout=HANG_SECONDS),
                   raw_submit(stack)):
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "database_unavailable" and answer.headers["Retry-After"] == "5"
    time.sleep(max(0.0, DATABASE_GAP - (time.monotonic() - stopped)))
    stack.postgres.start()

    kinds = assert_done_once(stack, running, tmp_path / "running.log")
    assert "worker_lost" not in kinds, kinds
    assert_done_once(stack, waiting, tmp_path / "waiting.log.submits")
