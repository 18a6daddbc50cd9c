"""Two API processes and two worker processes on one PostgreSQL database, 32 clients, 1 000 jobs.

A deployment scales the API by running replicas on one broker and one
database: nothing an API process keeps to itself may decide a job's fate or
what a key sees. Every client submits through both APIs in turn and reads
each job back through the other one; every job must run exactly once (its
rounds and its state changes written once, by the database's own record)
and give the model's exact outputs, and no key may see another key's job.
"""

import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from conftest import make_inputs, make_model
from qkan_orch.client import ApiError, Client, Job, JobState
from qkan_orch.models import save_model
from qkan_orch.service.local import LocalService
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.tables import JobEvent, Round
from service_env import stack_env

# ≤ 32 jobs per key: under the default active-job limit (QKAN_MAX_ACTIVE_JOBS_PER_KEY, 200), so none is refused;
# stack_env's FAST settings lift the per-key request rate limit
CLIENTS, JOBS = 32, 1000
WAIT = 180.0  # hang detector for one client's jobs; the whole run takes well under that


@dataclass(frozen=True)
class Setup:
    """The running service, its two API URLs, and what every job sends and must get back."""

    service: LocalService
    urls: tuple[str, str]  # API 1, API 2: each its own `qkan-orch serve` process
    model: Path
    inputs: list[np.ndarray]  # job j's
    want: list[np.ndarray]  # their exact outputs


@dataclass(frozen=True)
class Submitted:
    """What one client sent and got back: its key, its jobs by number, their final status and outputs."""

    key: str
    jobs: dict[int, str]
    final: dict[str, JobState]
    rounds: dict[str, tuple[int, int]]  # rounds_done, rounds_total
    outputs: dict[int, np.ndarray]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """Two workers of one process each and two API processes; the test process only runs clients."""
    tmp = tmp_path_factory.mktemp("two_apis")
    model = make_model(width=[2, 2, 1], reps=1).float()
    save_model(model, str(tmp / "m.safetensors"))
    inputs = [make_inputs(1 + j % 3, 2, seed=j) for j in range(JOBS)]
    with torch.no_grad():
        want = [model(torch.from_numpy(x).float()).numpy() for x in inputs]
    with stack_env("system-redis+postgresql", tmp) as env:
        service = LocalService(tmp, env, concurrency=1)
        service.start(workers=2, api_thread=False)
        try:
            first, second = service.start_api_processes(2)
            yield Setup(service, (first, second), tmp / "m.safetensors", inputs, want)
        finally:
            service.stop()


def finished(qc: Client, last: str, count: int) -> dict[str, Job]:
    """The key's jobs once all ``count`` are terminal: the last one submitted is waited for (the queue is roughly
    first in, first out), then the list is read until it shows every job finished — one request per poll
    either way, rather than one per job."""
    deadline = time.monotonic() + WAIT
    qc.wait(last, timeout=WAIT, progress=False, interval=0.5)
    while True:
        page = qc.jobs(limit=500)
        if page.total >= count and all(job.state.terminal for job in page.items):  # more: the test says whose
            return {job.id: job for job in page.items}
        assert time.monotonic() < deadline, f"{page.total} jobs listed, not all finished after {WAIT} s"
        time.sleep(0.5)


def run_client(setup: Setup, k: int, key: str) -> Submitted:
    """Client ``k`` starts on API k % 2, alternates APIs per submission, and reads each job through the API it
    did not submit it to."""
    mine = range(k, JOBS, CLIENTS)
    with Client(setup.urls[0], key) as first, Client(setup.urls[1], key) as second:
        apis = (first, second) if k % 2 == 0 else (second, first)
        model_id = apis[0].upload_model(setup.model).id
        jobs = {j: apis[j % 2].submit(model_id, setup.inputs[j]).id for j in mine}
        final = finished(apis[1], jobs[mine[-1]], len(jobs))
        outputs = {j: apis[(j + 1) % 2].result(jobs[j])[0] for j in mine
                   if final.get(jobs[j]) and final[jobs[j]].state == JobState.SUCCEEDED}
    return Submitted(key, jobs, {i: s.state for i, s in final.items()},
                     {i: (s.rounds_done, s.rounds_total) for i, s in final.items()}, outputs)


@pytest.fixture(scope="module")
def submitted(setup: Setup) -> list[Submitted]:
    keys = [setup.service.create_key(f"client-{k}") for k in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda k: run_client(setup, k, keys[k]), range(CLIENTS)))


def test_every_job_succeeds_once_with_the_exact_outputs(setup: Setup, submitted: list[Submitted]) -> None:
    ids = [job_id for client in submitted for job_id in client.jobs.values()]
    assert len(ids) == JOBS and len(set(ids)) == JOBS
    assert all(set(client.final) == set(client.jobs.values()) for client in submitted)  # its list: its jobs
    final = {i: s for client in submitted for i, s in client.final.items()}
    assert Counter(final.values()) == {JobState.SUCCEEDED: JOBS}
    rounds = {i: r for client in submitted for i, r in client.rounds.items()}
    assert all(done == total > 0 for done, total in rounds.values())
    for client in submitted:
        for j, got in client.outputs.items():
            assert np.max(np.abs(got - setup.want[j])) < 1e-5, j


def test_each_round_and_each_state_change_was_written_once(setup: Setup, submitted: list[Submitted]) -> None:
    """The database's own record: one row per (job, round), one ``round`` event per round, one ``running`` and one
    ``succeeded`` event per job — a step run twice by two workers, or a job published by both APIs, shows here."""
    totals = {i: total for client in submitted for i, (_, total) in client.rounds.items()}
    with session_scope(setup.service.settings.resolved_database_url) as session:
        rows = session.execute(select(Round.job_id, func.count(), func.count(Round.number.distinct()),
                                      func.min(Round.number), func.max(Round.number)).group_by(Round.job_id)).all()
        events = session.execute(select(JobEvent.job_id, JobEvent.kind, JobEvent.data)
                                 .where(JobEvent.kind.in_(("round", "state")))).all()
    assert {job_id: (n, distinct, low, high) for job_id, n, distinct, low, high in rows} == {
        job_id: (total, total, 0, total - 1) for job_id, total in totals.items()}
    round_events: dict[str, list[int]] = {job_id: [] for job_id in totals}
    states: dict[str, list[str]] = {job_id: [] for job_id in totals}
    for job_id, kind, data in events:
        (round_events if kind == "round" else states)[job_id].append(data["round"] if kind == "round"
                                                                     else data["state"])
    assert {job_id: sorted(numbers) for job_id, numbers in round_events.items()} == {
        job_id: list(range(1, total + 1)) for job_id, total in totals.items()}
    assert {job_id: sorted(s) for job_id, s in states.items()} == {
        job_id: ["running", "succeeded"] for job_id in totals}


def test_a_key_sees_its_own_jobs_only_through_either_api(setup: Setup, submitted: list[Submitted]) -> None:
    """Each key lists exactly its own jobs on both APIs, and a neighbour's job is 404 to it everywhere."""

    def check(k: int) -> None:
        client, other = submitted[k], submitted[(k + 1) % CLIENTS]
        stranger = next(iter(other.jobs.values()))
        for url in setup.urls:
            with Client(url, client.key) as qc:
                page = qc.jobs(limit=500)
                assert page.total == len(client.jobs)
                assert {job.id for job in page.items} == set(client.jobs.values())
                for call in (qc.status, qc.result, qc.cancel):
                    with pytest.raises(ApiError) as refused:
                        call(stranger)
                    assert refused.value.status == 404, (call.__name__, refused.value)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(check, range(CLIENTS)))  # re-raises the first failed check here
