"""The load benchmark's phases: bare noops through the worker, and jobs through the whole service."""

import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import httpx
import numpy as np
from celery import Celery
from load_cpu import CpuMeter
from load_instruments import EventWatcher, TaskSeen
from load_report import Phase
from noop_task import NAME as NOOP

from qkan_orch.client import Client, Job, JobState


def epoch(stamp: datetime | None) -> float | None:
    """An API timestamp (timezone-aware, from the client) as epoch seconds."""
    return None if stamp is None else stamp.timestamp()


@dataclass
class Submitted:
    """One noop or job as the client saw it: its task's id (the job's id for the service and the floor), and
    the client's clock before and after the publish or POST."""

    job_id: str
    start: float
    returned: float


def timed(cpu: CpuMeter | None, send: Callable[[], str]) -> Submitted:
    """One publish or POST on the client's clock; its thread CPU counts as the clients' (``cpu``)."""
    start, cpu_start = time.time(), time.thread_time()
    job_id = send()
    returned = time.time()
    if cpu is not None:
        cpu.add_client(time.thread_time() - cpu_start)
    return Submitted(job_id, start, returned)


def publish_noop(app: Celery, cpu: CpuMeter | None = None) -> Submitted:
    return timed(cpu, lambda: app.send_task(NOOP, queue="local").id)


def submit(qc: Client, model_id: str, inputs: np.ndarray, cpu: CpuMeter | None = None) -> Submitted:
    return timed(cpu, lambda: qc.submit(model_id, inputs, backend="exact").id)


def post_floor(client: httpx.Client, inputs: np.ndarray, cpu: CpuMeter | None = None,
               durable: bool = True, duties: bool = False) -> Submitted:
    """One job through the floor service (``floor_service.py``); its id is its task's id. Not ``durable``: its
    commits return before their WAL flush; ``duties``: with the service's duties beyond durability."""
    params = {**({} if durable else {"durable": "false"}), **({"duties": "true"} if duties else {})}

    def post() -> str:
        response = client.post("/jobs", json={"inputs": inputs.tolist()}, params=params)
        response.raise_for_status()
        return str(response.json()["id"])
    return timed(cpu, post)


def warm_up_noops(app: Celery, watcher: EventWatcher, timeout: float) -> None:
    """Until the worker is up, sends task events and the receiver is subscribed, then a few more so both
    processes have run. The worker is asked for task events (a control broadcast, lost while it is not yet
    listening, so asked again each try) rather than relying on its configuration to send them."""
    deadline = time.monotonic() + timeout
    while True:
        app.control.enable_events()
        task_id = publish_noop(app).job_id
        try:
            watcher.wait(lambda task_id=task_id: watcher.task_done(task_id), 2.0, "warm-up noop")
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
    ids = [publish_noop(app).job_id for _ in range(20)]
    watcher.wait(lambda: all(watcher.task_done(t) for t in ids), timeout, "warm-up noops")


Send = Callable[[], Submitted]


def one_at_a_time(label: str, sends: list[Send], watcher: EventWatcher,
                  timeout: float) -> tuple[Phase, list[Submitted]]:
    """Each send once the task before it has finished (bare noops and floor jobs: one task each)."""
    subs = []
    for send in sends:
        sub = send()
        watcher.wait(lambda sub=sub: watcher.task_done(sub.job_id), timeout, label)
        subs.append(sub)
    return _task_phase(label, subs, watcher), subs


def all_at_once(label: str, sends: list[Send], threads: int, watcher: EventWatcher,
                timeout: float) -> tuple[Phase, list[Submitted]]:
    """Every send from ``threads`` threads, then until every task has finished."""
    with ThreadPoolExecutor(threads) as pool:
        subs = list(pool.map(lambda send: send(), sends))
    watcher.wait(lambda: all(watcher.task_done(s.job_id) for s in subs), timeout, label)
    return _task_phase(label, subs, watcher), subs


def _task_phase(label: str, subs: list[Submitted], watcher: EventWatcher) -> Phase:
    """Done = the task-succeeded event: for a floor job after its last commit, later than the service's
    ``finished_at``, so the floor is not flattered against it."""
    dones = [watcher.tasks[s.job_id].done for s in subs]
    failed = sum(not watcher.tasks[s.job_id].ok for s in subs)
    return Phase(label, [s.start for s in subs], dones,  # type: ignore[arg-type]
                 {"failed": failed, "task_ids": [s.job_id for s in subs]})


def wait_jobs(qc: Client, watcher: EventWatcher, ids: list[str], timeout: float) -> dict[str, Job]:
    """Until every job is terminal: events first (no polling load), then the API's word for it."""
    watcher.wait(lambda: all(watcher.job_tasks_done(j) for j in ids), timeout, f"{len(ids)} jobs")
    deadline = time.monotonic() + timeout
    wanted = set(ids)
    while True:  # a job that needed a second step is not done when its first task is
        found = all_jobs(qc)
        pending = [j for j in wanted if j not in found or not found[j].state.terminal]
        if not pending:
            return {j: found[j] for j in ids}
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(ids)} jobs still not finished")
        time.sleep(0.5)


def all_jobs(qc: Client) -> dict[str, Job]:
    jobs: dict[str, Job] = {}
    offset = 0
    while True:
        page = qc.jobs(limit=500, offset=offset)
        jobs.update({j.id: j for j in page.items})
        offset += len(page.items)
        if not page.items or offset >= page.total:
            return jobs


def service_phase(label: str, subs: list[Submitted], status: dict[str, Job], watcher: EventWatcher) -> Phase:
    """Latencies from ``finished_at``, plus every timestamp of the per-job timeline."""
    segments: dict[str, list[float]] = defaultdict(list)
    failed = 0
    for sub in subs:
        job = status[sub.job_id]
        failed += job.state != JobState.SUCCEEDED
        created, started, finished = epoch(job.created_at), epoch(job.started_at), epoch(job.finished_at)
        tasks = watcher.job_tasks(sub.job_id)
        first = tasks[0] if tasks else TaskSeen()
        last_done = max((t.done for t in tasks if t.done is not None), default=None)
        marks = {
            "POST → row inserted (created_at)": (sub.start, created),
            "row inserted → published (task-sent)": (created, first.sent),
            "published → POST returned": (first.sent, sub.returned),
            "POST round trip (client)": (sub.start, sub.returned),
            "published → worker took it (task-received)": (first.sent, first.received),
            "worker took it → running (started_at)": (first.received, started),
            "running → finished_at": (started, finished),
            "finished_at → task returned (task-succeeded)": (finished, last_done),
        }
        for name, (a, b) in marks.items():
            if a is not None and b is not None:
                segments[name].append(b - a)
        segments["tasks per job"].append(len(tasks))
        segments["exact rounds, backend seconds"].append(sum(r.seconds or 0.0 for r in job.rounds))
    dones = [epoch(status[s.job_id].finished_at) or float("nan") for s in subs]
    return Phase(label, [s.start for s in subs], dones, {"failed": failed, "segments": segments})

