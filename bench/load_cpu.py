"""The load benchmark's CPU meter: CPU seconds per role over a phase, from psutil and /proc/stat.

Split from ``load_instruments`` (the benchmark's other instruments): who
burns the cores a job needs, the service's processes and everything else.
"""

import os
import subprocess
import threading
import time

import psutil
import redis
from load_instruments import PgStats

from qkan_orch.service.local import LocalService


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used; 0 once it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    return times.user + times.system


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and every process below it (a worker: Celery's main process and its prefork children); empty
    once it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and every process below it."""
    return sum(process_cpu(p.pid) for p in process_tree(pid))


def thread_cpu(native_id: int | None) -> float:
    """CPU seconds of one thread of this process."""
    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return thread.user_time + thread.system_time
    return 0.0


def unowned_cpu(exclude: set[int]) -> dict[str, float]:
    """CPU seconds of the processes no role owns that the "other processes" row is known to hold, by pid: the
    PostgreSQL server's own (WAL writer, checkpointer, autovacuum, other databases' backends) and the kernel's
    threads (writeback, memory monitors: children of kthreadd, pid 2). Keyed ``pgown:<pid>`` and ``kthread:<pid>``
    so a process that starts in a phase counts whole, as the run's backends do."""
    out: dict[str, float] = {}
    for process in psutil.process_iter(["pid", "ppid", "name"]):
        pid, name = process.info["pid"], process.info["name"] or ""
        if pid in exclude:
            continue
        kind = ("kthread" if pid == 2 or process.info["ppid"] == 2
                else "pgown" if name.startswith("postgres") else None)
        if kind is not None:
            out[f"{kind}:{pid}"] = process_cpu(pid)
    return out


def interrupts_busy() -> float:
    """CPU seconds all cores spent in interrupt handlers (irq, softirq) since boot: no process's time."""
    t = psutil.cpu_times()
    return t.irq + t.softirq


def machine_busy() -> float:
    """CPU seconds all cores spent busy since boot: everything but idle and iowait."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


class CpuMeter:
    """CPU seconds per role over a phase (psutil): who burns the cores a job needs.

    The bench process holds the client threads and the event receiver (and,
    with ``--api thread``, the API); the clients' share is summed by the
    client calls themselves (``time.thread_time``) and the receiver's read
    from its thread, so an API thread's share follows by difference; API
    processes (``LocalService.start_api_processes``) are measured as
    themselves. Worker = the ``qkan-orch worker``
    process and its prefork children; Redis = the server's process (the
    system one also serves others, but little while a phase runs); this
    run's PostgreSQL backends. Whatever else the machine's cores did in the
    phase is "other processes": on a shared machine that is the first thing
    to check before believing a throughput. Three parts of it are shown on
    their own: the PostgreSQL server's other processes (WAL writer,
    checkpointer, autovacuum), the kernel's threads (writeback, memory
    monitors) and interrupt handling; what remains is everyone else's.
    """

    def __init__(self, service: LocalService, watcher: threading.Thread, pg: PgStats | None) -> None:
        self.service, self.watcher, self.pg = service, watcher, pg
        self.client_seconds = 0.0
        self.extra_apis: list[subprocess.Popen] = []  # API processes LocalService did not start (the floor's)
        self.lock = threading.Lock()
        info = redis.Redis.from_url(service.settings.redis_url or "").info("server")
        self.redis_pid = int(info["process_id"])
        self.redis_label = "redis-server (embedded)" if service.redis is not None else "redis-server (system)"

    def add_client(self, seconds: float) -> None:
        with self.lock:
            self.client_seconds += seconds

    def snapshot(self) -> dict[str, float]:
        snap = {
            "wall": time.monotonic(),
            "machine": machine_busy(),
            "bench process": process_cpu(os.getpid()),
            "client calls": self.client_seconds,
            "event receiver": thread_cpu(self.watcher.native_id),
            "API processes": sum(tree_cpu(api.pid) for api in [*self.service.api_processes, *self.extra_apis]),
            "worker processes": sum(tree_cpu(worker.pid) for worker in self.service.workers),
            "redis-server": process_cpu(self.redis_pid),
        }
        backends = self.pg.backends() if self.pg is not None else []
        snap.update({f"pg:{pid}": process_cpu(pid) for pid in backends})
        snap.update(unowned_cpu(set(backends)))
        snap["interrupts"] = interrupts_busy()
        return snap

    def per_item(self, before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
        """ms of CPU per job/noop by role; an API thread's is the bench process minus clients and receiver."""
        delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        rest = delta["bench process"] - delta["client calls"] - delta["event receiver"]
        out = {
            "API processes": delta["API processes"],
            "bench process − clients − receiver" if self.service.api_processes
            else "API (bench process − clients − receiver)": rest,
            "client calls": delta["client calls"],
            "event receiver": delta["event receiver"],
            "worker processes": delta["worker processes"],
            self.redis_label: delta["redis-server"],
        }
        pg = [v for k, v in delta.items() if k.startswith("pg:")]
        if pg:
            out["PostgreSQL backends"] = sum(pg)
        ours = sum(out.values())
        out["all of the above"] = ours
        out["other processes on the machine"] = delta["machine"] - ours
        out["  of which PostgreSQL's own processes"] = sum(v for k, v in delta.items() if k.startswith("pgown:"))
        out["  of which kernel threads"] = sum(v for k, v in delta.items() if k.startswith("kthread:"))
        out["  of which interrupts (irq, softirq)"] = delta["interrupts"]
        out["idle"] = (os.cpu_count() or 1) * delta["wall"] - delta["machine"]
        return {k: 1000 * v / n for k, v in out.items()}
