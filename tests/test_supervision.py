"""``serve`` supervises what it starts, and a dead worker's job moves on within its lease (issue 9, items 4–5).

Real processes throughout: ``qkan-orch serve`` with its embedded Redis and
worker, SIGKILLed and SIGTERMed as an operator or the kernel would; a
LocalService on the system Redis and PostgreSQL for the sweeper; real
databases for the take-over race.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest
import redis
from sqlalchemy import select

from conftest import make_inputs, make_model
from qkan_orch.client import Client, JobState
from qkan_orch.models import save_model
from qkan_orch.service.local import LocalService
from qkan_orch.service.processes import free_port, stop_group, wait_for_api, wait_until
from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.database import session_scope, upgrade
from qkan_orch.service.store.keys import create_key
from qkan_orch.service.store.states import JobState as StoredState
from qkan_orch.service.store.tables import Job, JobEvent
from qkan_orch.workers.sweeper import sweep
from service_env import FAST, postgres_url, stack_env

pytestmark = pytest.mark.usefixtures("plugin_backends")
BIN = Path(sys.executable).parent


class Served:
    """A running ``qkan-orch serve`` (embedded Redis, one worker of one process) and what the tests need of it."""

    def __init__(self, tmp: Path, **settings: str) -> None:
        self.tmp, self.data = tmp, tmp / "data"
        port = free_port()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("QKAN_")}
        self.env.update(QKAN_DATA_DIR=str(self.data), QKAN_API_PORT=str(port), QKAN_URL=f"http://127.0.0.1:{port}",
                        QKAN_BACKEND_PLUGINS=FAST["QKAN_BACKEND_PLUGINS"], PYTHONPATH=FAST["PYTHONPATH"], **settings)
        self.log = tmp / "serve.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([str(BIN / "qkan-orch"), "serve", "--worker-concurrency", "1"],
                                            env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        wait_for_api(self.env["QKAN_URL"], timeout=120, check=self._running)
        self.key = self.cli("keys", "create", "--name", "supervision").stdout.strip()

    def _running(self) -> None:
        assert self.process.poll() is None, self.log.read_text()

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BIN / "qkan-orch"), *args], capture_output=True, text=True, env=self.env,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    def client(self) -> Client:
        return Client(self.env["QKAN_URL"], self.key)

    def child(self, name: str) -> psutil.Process:
        """The serve's direct child called ``name`` (redis-server, or the worker's main process)."""
        def found() -> psutil.Process | None:
            for child in psutil.Process(self.process.pid).children():
                try:
                    if name in " ".join(child.cmdline()):
                        return child
                except psutil.NoSuchProcess:  # a dead one, not yet reaped (ZombieProcess) or just gone
                    continue
            return None

        return wait_until(found, f"serve's {name}", 60)

    def restarted(self, name: str, old: psutil.Process) -> psutil.Process:
        """The child that replaced ``old``, once the supervisor started it."""
        return wait_until(lambda: (new := self.child(name)).pid != old.pid and new, f"a new {name}", 60)

    def stop(self) -> None:
        stop_group(self.process, timeout=60)


@contextmanager
def serving(tmp: Path, **settings: str) -> Iterator[Served]:
    served = Served(tmp, **settings)
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:  # type: ignore[no-untyped-def]
    """One serve for the kill tests; a short lease so that the worker's death costs seconds, not half a minute."""
    with serving(tmp_path_factory.mktemp("served"), QKAN_LEASE_SECONDS="6") as served:
        yield served


def two_layer_model(qc: Client, tmp: Path) -> str:
    save_model(make_model(width=[2, 3, 1], reps=1).float(), str(tmp / "m.safetensors"))
    return qc.upload_model(tmp / "m.safetensors").id


def counted_jobs(qc: Client, tmp: Path, count: int, delay: float, tag: str,
                 first_delay: float | None = None) -> list[tuple[str, Path]]:
    """``count`` jobs of a two-layer model on ``test:counting``, each logging its rounds to a file of its own;
    the first one's rounds take ``first_delay`` if given."""
    model_id = two_layer_model(qc, tmp)
    jobs = []
    for k in range(count):
        log = tmp / f"{tag}-{k}.rounds"
        job = qc.submit(model_id, make_inputs(4, 2, seed=k), backend="test:counting",
                        options={"delay": first_delay if k == 0 and first_delay is not None else delay,
                                 "log": str(log)})
        jobs.append((job.id, log))
    return jobs


def assert_each_succeeded_once(qc: Client, jobs: list[tuple[str, Path]], timeout: float) -> None:
    """Every job succeeded, and the backend ran each of its rounds exactly once (no round lost, none repeated)."""
    deadline = time.monotonic() + timeout
    for job_id, log in jobs:
        final = qc.wait(job_id, timeout=max(1.0, deadline - time.monotonic()), progress=False)
        assert final.state == JobState.SUCCEEDED, final.error
        rounds = log.read_text().splitlines()
        assert len(rounds) == final.rounds_total == 2 and len(set(rounds)) == 2, (job_id, rounds)
        assert [r.number for r in final.rounds] == [0, 1]


def test_a_killed_embedded_redis_is_restarted_and_every_queued_job_succeeds_once(served: Served) -> None:
    """SIGKILL of redis-server with 20 jobs queued and one waiting on its provider: restarted on its port and
    AOF, the queue comes back and drains. The waiting job's next poll is a countdown message the worker held
    and drops with the dead connection; the restart hands it back at once, where Redis alone would wait for
    the 300 s visibility timeout (the test's 120 s bound would not survive that)."""
    with served.client() as qc:
        waiting = qc.submit(two_layer_model(qc, served.tmp), make_inputs(4, 2), backend="test:pending",
                            options={"pending_polls": 2, "log": str(served.tmp / "pending.log")})
        wait_until(lambda: qc.status(waiting.id).state == JobState.WAITING_ON_PROVIDER, "a provider wait", 60)
        jobs = counted_jobs(qc, served.tmp, 20, delay=0.2, tag="broker")
        old = served.child("redis-server")
        queued = sum(qc.status(job_id).state == JobState.QUEUED for job_id, _ in jobs)
        old.kill()
        new = served.restarted("redis-server", old)
        assert queued >= 10, "the jobs should still be queued when the broker dies"
        assert new.cwd() == str(served.data / "redis")  # same folder, so same AOF
        assert_each_succeeded_once(qc, jobs, timeout=120)
        final = qc.wait(waiting.id, timeout=60, progress=False)
        assert final.state == JobState.SUCCEEDED and final.rounds_done == 2, final.error
    log = served.log.read_text()
    assert re.search(rf"the embedded Redis \(pid {old.pid}\) exited with -9 .*; restarting it in", log), log
    assert f"the embedded Redis restarted (pid {new.pid})" in log
    assert re.search(r"after the Redis restart: [1-9]\d* unacknowledged messages back on their queues", log), log


def test_a_killed_worker_is_restarted_and_its_jobs_succeed_once(served: Served) -> None:
    """SIGKILL of the worker's main process mid-job: its pool goes with it and a new worker starts. The job it
    held moves on when its lease runs out; the provider-waiting job whose next poll (a countdown message) it
    held is handed back at once rather than after the 300 s visibility timeout; the queued ones run as
    they come."""
    with served.client() as qc:
        waiting = qc.submit(two_layer_model(qc, served.tmp), make_inputs(4, 2), backend="test:pending",
                            options={"pending_polls": 3, "log": str(served.tmp / "pending-worker.log")})
        wait_until(lambda: qc.status(waiting.id).state == JobState.WAITING_ON_PROVIDER, "a provider wait", 60)
        # the first job is running (1 s a round) when the worker dies; the others wait behind it whatever their
        # delay (one process), so theirs is short: they only have to run, once each, after the restart
        jobs = counted_jobs(qc, served.tmp, 5, delay=0.2, first_delay=1.0, tag="worker")
        old = served.child("worker")
        pool = old.children()
        wait_until(lambda: qc.status(jobs[0][0]).state == JobState.RUNNING, "the first job to run", 60)
        old.kill()
        served.restarted("worker", old)
        assert not psutil.wait_procs(pool, timeout=10)[1], "the dead worker's pool was left running"
        assert_each_succeeded_once(qc, jobs, timeout=120)
        final = qc.wait(waiting.id, timeout=60, progress=False)
        assert final.state == JobState.SUCCEEDED and final.rounds_done == 2, final.error
    log = served.log.read_text()
    assert f"worker (pid {old.pid}) exited with -9" in log
    assert re.search(r"after the death of worker: [1-9]\d* unacknowledged messages back on their queues", log), log


def test_a_second_serve_on_the_same_folder_exits_with_a_one_line_error(served: Served) -> None:
    env = {**served.env, "QKAN_API_PORT": str(free_port())}
    second = subprocess.run([str(BIN / "qkan-orch"), "serve"], capture_output=True, text=True, env=env, timeout=60)
    assert second.returncode == 1
    assert second.stderr.strip() == (f"qkan-orch: error: {served.data.resolve()} is in use by another "
                                     f"qkan-orch serve (pid {served.process.pid})")
    assert served.process.poll() is None and served.cli("keys", "list").returncode == 0


def test_the_embedded_redis_is_private_to_its_user(served: Served) -> None:
    """0700 folders, a random password that appears in no command line and no log: other local users can
    neither read the queue's files nor talk to the server."""
    redis_dir = served.data / "redis"
    assert (served.data.stat().st_mode & 0o777) == 0o700 and (redis_dir.stat().st_mode & 0o777) == 0o700
    config = redis_dir / "redis.conf"
    assert (config.stat().st_mode & 0o777) == 0o600
    text = config.read_text()
    port = int(re.search(r"^port (\d+)$", text, re.M).group(1))  # type: ignore[union-attr]
    password = re.search(r'^requirepass "(.+)"$', text, re.M).group(1)  # type: ignore[union-attr]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    assert redis.Redis(port=port, password=password).ping()
    server = served.child("redis-server")
    assert server.connections("tcp") and {c.laddr.ip for c in server.connections("tcp") if c.status == "LISTEN"} \
        == {"127.0.0.1"}
    for process in [psutil.Process(served.process.pid), *psutil.Process(served.process.pid).children(True)]:
        assert password not in " ".join(process.cmdline())
    for log in [served.log, *served.data.glob("*.log"), redis_dir / "redis.log"]:
        assert password not in log.read_text(), log


def ours(data: Path) -> list[psutil.Process]:
    """Every live process working for the service on ``data``: its workers (and their pools) by their
    environment, its Redis by its working folder."""
    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get("QKAN_DATA_DIR") == str(data) or process.cwd() == str(data / "redis"):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_sigterm_to_serve_in_the_middle_of_a_restart_leaves_no_process_behind(tmp_path: Path) -> None:
    """The worker dies, and serve is told to stop while its supervisor is starting the new one: serve, the new
    worker, its pool and Redis all end; the folder is free for the next serve."""
    with serving(tmp_path) as served:
        old = served.child("worker")
        before = ours(served.data)
        assert {p.name() for p in before} >= {"redis-server"} and len(before) >= 3  # Redis, worker, its pool
        old.kill()
        wait_until(lambda: "worker (pid" in served.log.read_text(), "the supervisor to notice", 30, interval=0.02)
        time.sleep(1.1)  # the 1 s back-off is over: the new worker is starting
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(60) is not None
        gone = psutil.wait_procs(before, timeout=30)[1]
        assert not gone and not ours(served.data), served.log.read_text()
    with serving(tmp_path) as again:  # the lock went with the process
        assert again.cli("keys", "list").returncode == 0


@pytest.fixture(scope="module")
def sweeping(tmp_path_factory) -> Iterator[tuple[LocalService, Client, str]]:  # type: ignore[no-untyped-def]
    """A service with the default 30 s lease and a visibility timeout far beyond the test: only the sweeper can
    move a dead worker's job on."""
    tmp = tmp_path_factory.mktemp("sweeping")
    with stack_env("system-redis+postgresql", tmp) as env:
        env = {**env, "QKAN_LEASE_SECONDS": "30", "QKAN_BROKER_VISIBILITY_TIMEOUT": "3600"}
        with LocalService(tmp, env, concurrency=1) as service, Client(service.url, service.create_key()) as qc:
            save_model(make_model(width=[2, 3, 3, 1], reps=2).float(), str(tmp / "m.safetensors"))
            yield service, qc, qc.upload_model(tmp / "m.safetensors").id


def leased_in_round_2(service: LocalService, job_id: str) -> bool:
    """Round 1 is written and a worker holds the job: round 2 is under way."""
    with session_scope(service.settings.resolved_database_url) as session:
        job = session.get(Job, job_id)
        return job is not None and job.rounds_done == 1 and job.lease_owner is not None


def test_a_worker_killed_mid_job_is_resumed_by_the_sweeper_within_a_minute(sweeping, tmp_path: Path) -> None:
    """SIGKILL (whole group) during the second of three rounds; the supervisor starts a new worker, whose
    sweeper takes the job over once the dead one's lease expires: each round runs once, the job shows
    ``worker_lost``, and the second round is done within 60 s of the kill (the broker alone: 3600 s)."""
    service, qc, model_id = sweeping
    log = tmp_path / "rounds.log"
    # round 2 takes 3 s (the kill lands in it, and its rerun takes as long); rounds 1 and 3 need no delay
    job = qc.submit(model_id, make_inputs(6, 2), backend="test:counting",
                    options={"delay": [0.2, 3.0, 0.2], "log": str(log)})
    wait_until(lambda: leased_in_round_2(service, job.id), "round 2 to start", 60, interval=0.05)
    service.kill_worker(service.workers[0])  # round 2 is in its 3 s delay: nothing of it written
    killed = time.monotonic()
    assert len(log.read_text().splitlines()) == 1
    wait_until(lambda: qc.status(job.id).rounds_done >= 2, "round 2 after the kill", 90, interval=0.2)
    resumed = time.monotonic() - killed
    final = qc.wait(job.id, timeout=60, progress=False)
    assert final.state == JobState.SUCCEEDED, final.error
    rounds = log.read_text().splitlines()
    assert len(rounds) == 3 and len(set(rounds)) == 3
    kinds = [event for event, _ in qc.events(job.id)]
    assert kinds.count("worker_lost") == 1, kinds
    assert resumed < 60, f"round 2 done {resumed:.0f} s after the kill"
    print(f"round 2 done {resumed:.1f} s after the kill (lease 30 s, sweep every 15 s)")


def expired_job(url: str) -> str:
    """A running job whose worker (lease owner ``dead``) stopped renewing ten seconds ago."""
    upgrade(url)
    with session_scope(url) as session:
        key, _ = create_key(session, "sweeper")
        job = Job(id=str(uuid.uuid4()), owner_id=key.id, kind="inference", backend="exact", queue="local",
                  request_hash="x", state=StoredState.RUNNING, inputs=b"", lease_owner="dead",
                  lease_until=time.time() - 10)
        session.add(job)
        return job.id


@contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "postgresql":
        with postgres_url() as url:
            yield url
    else:
        yield f"sqlite:///{tmp / 'qkan.db'}"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_of_concurrent_sweepers_exactly_one_takes_an_expired_job_over(kind: str, tmp_path: Path) -> None:
    """Eight sweeps at once (as eight workers would): one conditional UPDATE wins, one step is published, one
    ``worker_lost`` event is written, and the job's row names the published message; a later sweep finds
    nothing."""
    with database(kind, tmp_path) as url:
        job_id = expired_job(url)
        published: list[tuple[str, str, str]] = []
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def sweeper() -> None:
            start.wait()
            try:
                sweep(url, lambda *message: published.append(message))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=sweeper) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors and len(published) == 1 and published[0][:2] == (job_id, "local")
        with session_scope(url) as session:
            job = session.get(Job, job_id)
            assert job is not None and job.lease_owner is None and job.task_id == published[0][2]
            events = session.scalars(select(JobEvent.kind).where(JobEvent.job_id == job_id)).all()
            assert events == ["worker_lost"]
            assert store.expired_leases(session) == []
        assert sweep(url, lambda *message: published.append(message)) == [] and len(published) == 1
