"""Faults a worker meets in service: a SIGTERM (deploy, scale-in), a message delivered twice, a provider in an outage.

Each test runs real worker processes on the system Redis and a fresh PostgreSQL database. The main stack's
visibility timeout (300 s) and lease (120 s) are long, so that a job that only moved on once either ran out
would blow the tests' hang detectors: whatever continues a job here continues it at once. Which worker holds a
message comes from the ``task-received`` events the workers send (``worker_send_task_events``, which Flower needs
too); which ran a round, from the pid ``test:counting`` logs.
"""

import json
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import redis
from sqlalchemy import select

from conftest import make_inputs, make_model
from qkan_orch.client import Client, JobState
from qkan_orch.models import save_model
from qkan_orch.service.broker import celery_app
from qkan_orch.service.local import LocalService
from qkan_orch.service.processes import wait_until
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.tables import Job, JobEvent
from service_env import stack_env

RETRIES = 2  # QKAN_TASK_MAX_RETRIES of the main stack
pytestmark = [
    pytest.mark.usefixtures("plugin_backends"),
    pytest.mark.service(concurrency=1, workers=2, env={
        "QKAN_BROKER_VISIBILITY_TIMEOUT": "300", "QKAN_LEASE_SECONDS": "120",
        "QKAN_TASK_SLICE_SECONDS": "0.5",  # a round longer than that ends its step
        "QKAN_POLL_INTERVAL": "1.0",  # a poll's countdown message is held long enough to be caught held
        "QKAN_TASK_MAX_RETRIES": str(RETRIES),
    }),
]
X = make_inputs(6, 2)  # three rounds on a [2, 3, 3, 1] model


def upload_model(qc: Client, folder: Path) -> str:
    save_model(make_model(width=[2, 3, 3, 1], reps=2).float(), str(folder / "m.safetensors"))
    return qc.upload_model(folder / "m.safetensors").id


@pytest.fixture(scope="module")
def model_id(qc: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    return upload_model(qc, tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def reference(qc: Client, model_id: str) -> np.ndarray:
    """The exact simulator's outputs for X: every fault below must end in exactly these."""
    job = qc.submit(model_id, X)
    assert qc.wait(job.id, timeout=60, progress=False).state == JobState.SUCCEEDED
    return qc.result(job.id)[0]


class JobRow(NamedTuple):
    """What the tests read of a job's row: who holds it, until when, its next message, when it ended."""

    lease_owner: str | None
    lease_until: float | None
    task_id: str | None
    finished_at: datetime | None


def job_row(service: LocalService, job_id: str) -> JobRow:
    with session_scope(service.settings.resolved_database_url) as session:
        return JobRow(*session.execute(select(Job.lease_owner, Job.lease_until, Job.task_id, Job.finished_at)
                                       .where(Job.id == job_id)).one())


def events(service: LocalService, job_id: str, kind: str) -> list[dict[str, Any]]:
    with session_scope(service.settings.resolved_database_url) as session:
        return list(session.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.kind == kind)
                                    .order_by(JobEvent.id)))


def all_consuming(service: LocalService) -> None:
    """Wait until every worker answers a ping, so that another worker is there to continue at once."""
    control = celery_app(service.settings).control
    wait_until(lambda: len(control.ping(timeout=1.0)) == len(service.workers), "every worker to answer", 60)


def terminated(service: LocalService, pid: int) -> int:
    """SIGTERM the main process of the worker ``pid``, as ``docker stop`` does; its exit status once it has
    exited by itself."""
    worker = next(w for w in service.workers if w.pid == pid)
    worker.send_signal(signal.SIGTERM)
    return worker.wait(timeout=60)  # a hang detector, not a timing bound


class _Receipts:
    """The main-process pid of each worker that received a message, per message id, in order, from the
    ``task-received`` events the workers send (worker_send_task_events)."""

    def __init__(self, service: LocalService) -> None:
        self.app, self.ready = celery_app(service.settings), threading.Event()
        self.pids: defaultdict[str, list[int]] = defaultdict(list)

    @contextmanager
    def listening(self) -> Iterator[defaultdict[str, list[int]]]:
        ready, pids = self.ready, self.pids

        class Receiver(self.app.events.Receiver):  # type: ignore[name-defined,misc]
            def on_consume_ready(self, *args: Any, **kwargs: Any) -> None:
                super().on_consume_ready(*args, **kwargs)
                ready.set()

        with self.app.connection_for_read() as connection:
            receiver = Receiver(connection, handlers={"task-received": lambda e: pids[e["uuid"]].append(e["pid"])})
            thread = threading.Thread(target=receiver.capture, kwargs={"limit": None, "wakeup": False}, daemon=True)
            thread.start()
            try:
                assert ready.wait(30), "the event receiver did not start"
                yield pids
            finally:
                receiver.should_stop = True
                thread.join(10)


def test_sigterm_mid_step_finishes_the_step_and_another_worker_continues_at_once(
        svc: LocalService, qc: Client, model_id: str, reference: np.ndarray, tmp_path: Path) -> None:
    all_consuming(svc)
    log = tmp_path / "rounds.log"
    started = Path(f"{log}.started")  # the pid of the worker that ran each round
    job = qc.submit(model_id, X, backend="test:counting", options={"delay": [0.6, 2.0, 0.6], "log": str(log)})
    wait_until(lambda: started.exists() and len(started.read_text().split()) == 2, "round 2 to start", 60)
    holder = int(started.read_text().split()[1])
    lease_until = job_row(svc, job.id).lease_until  # the lease of the step running round 2
    assert lease_until is not None

    assert terminated(svc, holder) == 0  # a warm shutdown
    final = qc.wait(job.id, timeout=60, progress=False)
    assert final.state == JobState.SUCCEEDED, final.error
    assert np.array_equal(qc.result(job.id)[0], reference)
    rounds = log.read_text().splitlines()
    assert len(rounds) == 3 and len(set(rounds)) == 3  # every round ran once: round 2 finished, not redone
    pids = started.read_text().split()
    assert len(pids) == 3 and pids[1] == str(holder) and pids[2] != str(holder)  # it took no step after SIGTERM
    # the next step was published and taken at once, not after the lease (or the visibility timeout) ran out
    finished_at = job_row(svc, job.id).finished_at
    assert finished_at is not None and finished_at.timestamp() < lease_until


def test_a_warm_shutdown_hands_back_the_countdown_message_it_held(
        svc: LocalService, qc: Client, model_id: str, reference: np.ndarray, tmp_path: Path) -> None:
    """No wait for the worker the last test stopped: the holder is consuming, and the other takes the message
    once it is up (at once if it already is)."""
    log = tmp_path / "pending.log"
    polls = Path(f"{log}.polls")
    broker = redis.Redis.from_url(svc.env["QKAN_REDIS_URL"])
    with _Receipts(svc).listening() as receipts:
        job = qc.submit(model_id, X, backend="test:pending",
                        options={"pending_polls": 1, "later_polls": 0, "log": str(log)})

        def held() -> str | None:
            """The id of the job's next poll while a worker holds it unacknowledged, waiting out its 1 s countdown
            (which has just begun)."""
            if not polls.exists():
                return None
            row = job_row(svc, job.id)
            if row.lease_owner is not None or row.task_id is None or not receipts[row.task_id]:
                return None
            fresh = time.time() - json.loads(polls.read_text().splitlines()[-1])["at"] < 0.5
            unacked = any(row.task_id.encode() in m for m in broker.hvals("unacked"))
            return row.task_id if fresh and unacked else None

        task_id = wait_until(held, "a worker to hold the job's next poll", 60, interval=0.02)
        holder = receipts[task_id][0]
        assert terminated(svc, holder) == 0
        final = qc.wait(job.id, timeout=60, progress=False)  # the visibility timeout (300 s) would blow this
    assert final.state == JobState.SUCCEEDED, final.error
    assert np.array_equal(qc.result(job.id)[0], reference)
    # the holder put the message back on its queue as it stopped, and another worker took it
    assert len(receipts[task_id]) == 2 and receipts[task_id][1] != holder, receipts[task_id]


def test_a_provider_that_recovers_from_each_outage_finishes_the_job(
        svc: LocalService, qc: Client, model_id: str, reference: np.ndarray, tmp_path: Path) -> None:
    log = tmp_path / "unsteady.log"
    job = qc.submit(model_id, X, backend="test:unsteady",
                    options={"submit_failures": RETRIES, "poll_failures": RETRIES, "log": str(log)})
    final = qc.wait(job.id, timeout=60, progress=False)
    assert final.state == JobState.SUCCEEDED, final.error
    assert np.array_equal(qc.result(job.id)[0], reference)
    retries = [e["attempt"] for e in events(svc, job.id, "retry")]
    # 12 transient errors over the job's life, never more than the budget in a row: each answer resets the count
    assert retries == [1, 2] * 6, retries
    assert not Path(f"{log}.cancelled").exists()


@pytest.mark.parametrize("outage", ["submit", "poll"])
def test_a_provider_that_never_recovers_fails_the_job_and_leaves_nothing_running(
        svc: LocalService, qc: Client, model_id: str, tmp_path: Path, outage: str) -> None:
    log = tmp_path / "down.log"
    job = qc.submit(model_id, X, backend="test:unsteady", options={f"{outage}_failures": -1, "log": str(log)})
    final = qc.wait(job.id, timeout=60, progress=False)
    assert final.state == JobState.FAILED and final.error is not None
    assert final.error.code == "provider_error"
    assert final.error.message.startswith(f"gave up after {RETRIES} retries: provider unavailable ({outage} ")
    assert [e["attempt"] for e in events(svc, job.id, "retry")] == list(range(1, RETRIES + 1))
    failure = events(svc, job.id, "state")[-1]
    cancelled = Path(f"{log}.cancelled")
    if outage == "submit":  # nothing reached the provider: nothing to cancel
        assert not cancelled.exists() and "cancelled_provider_jobs" not in failure
    else:  # round 1 was in flight when the budget ran out: its provider job is cancelled, and the event says so
        in_flight = final.rounds[0].provider_job_ids
        assert len(in_flight) == 1
        assert cancelled.read_text().split() == in_flight
        assert failure["cancelled_provider_jobs"] == in_flight


@pytest.fixture(scope="module")
def redelivering(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalService, Client, str]]:
    """A service whose broker gives a message held 1 s unacknowledged to another consumer
    (QKAN_BROKER_VISIBILITY_TIMEOUT=1): any step longer than that is delivered twice. Its one worker runs two."""
    tmp = tmp_path_factory.mktemp("redelivering")
    with stack_env("system-redis+postgresql", tmp) as env, \
            LocalService(tmp, {**env, "QKAN_BROKER_VISIBILITY_TIMEOUT": "1"}, concurrency=2).running(1) as service, \
            Client(service.url, service.create_key("redelivering")) as client:
        yield service, client, upload_model(client, tmp)


def test_a_step_delivered_twice_runs_once(redelivering: tuple[LocalService, Client, str], reference: np.ndarray,
                                         tmp_path: Path) -> None:
    service, qc, model_id = redelivering
    log = tmp_path / "rounds.log"
    with _Receipts(service).listening() as receipts:
        # round 2 takes 4 s: its message is restored to the queue and taken by the other pool process meanwhile
        job = qc.submit(model_id, X, backend="test:counting", options={"delay": [0.2, 4.0, 0.2], "log": str(log)})
        final = qc.wait(job.id, timeout=60, progress=False)
    assert max(map(len, receipts.values())) >= 2, receipts  # a message was delivered twice
    assert final.state == JobState.SUCCEEDED, final.error
    assert np.array_equal(qc.result(job.id)[0], reference)
    rounds = log.read_text().splitlines()
    assert len(rounds) == 3 and len(set(rounds)) == 3  # each round computed and submitted once
    assert len(Path(f"{log}.started").read_text().split()) == 3  # the second delivery did not even start one
    assert [r.number for r in final.rounds] == [0, 1, 2]
    assert [e["state"] for e in events(service, job.id, "state")].count("succeeded") == 1
