"""Child processes of a local service: worker and API process groups, free ports, waiting until something answers.

``qkan-orch serve``, LocalService, the tests and the benchmarks start and stop
their processes through these functions only, so a worker is started, and
stopped, the same way everywhere.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import httpx
import redis

T = TypeVar("T")

WORKER_QUEUES = "local,ibm,braket"
# what a server's client raises while the server is still starting
NOT_YET = (OSError, httpx.TransportError, redis.ConnectionError, redis.TimeoutError)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready: Callable[[], T], what: str, timeout: float, check: Callable[[], None] | None = None,
               interval: float = 0.1) -> T:
    """Poll ``ready`` until it returns something truthy, and return that.

    Connection errors count as "not yet"; ``check`` runs before every poll and
    raises when waiting is pointless (the process being waited for has died).
    """
    deadline = time.monotonic() + timeout
    while True:
        if check is not None:
            check()
        try:
            value = ready()
        except NOT_YET:
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def api_is_ready(url: str) -> bool:
    """The API at ``url`` answers GET /readyz with 200 (database and broker reachable)."""
    return httpx.get(f"{url}/readyz", timeout=2).status_code == 200


def wait_for_api(url: str, timeout: float = 60.0, check: Callable[[], None] | None = None) -> None:
    wait_until(lambda: api_is_ready(url), f"GET {url}/readyz to answer 200", timeout, check)


def redis_answers(url: str) -> bool:
    return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())


def start_worker(env: dict[str, str], queues: str = WORKER_QUEUES, concurrency: int | None = None,
                 log_file: Path | None = None, include: str | None = None) -> subprocess.Popen:
    """A ``qkan-orch worker`` child in its own process group, so it and its prefork children stop together.

    ``env`` is laid over this process's environment; ``include`` names extra
    task modules for the worker to import (``--include``).
    """
    argv = ["worker", "--queues", queues]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    if include:
        argv += ["--include", include]
    return _start_cli(argv, env, log_file)


def start_api(env: dict[str, str], port: int, log_file: Path) -> subprocess.Popen:
    """A ``qkan-orch serve`` child on 127.0.0.1:``port`` in its own process group: with QKAN_REDIS_URL in
    ``env`` it is the API alone (no broker, no worker), as one of several API replicas is deployed."""
    return _start_cli(["serve", "--host", "127.0.0.1", "--port", str(port)], env, log_file)


def _start_cli(args: list[str], env: dict[str, str], log_file: Path | None) -> subprocess.Popen:
    """``qkan-orch <args>`` as a child (``start_child``)."""
    return start_child([sys.executable, "-m", "qkan_orch.cli.main", *args], env, log_file)


def start_child(argv: list[str], env: dict[str, str], log_file: Path | None) -> subprocess.Popen:
    """``argv`` as a child in a process group of its own (``stop_group`` stops it whole), ``env`` laid over ours,
    output appended to ``log_file`` (or nowhere)."""
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # the child keeps its own copy
    try:
        return subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        if log_file:
            out.close()


def signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group ``process`` leads; nothing if it is already gone."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the whole group at once: no warm shutdown, nothing acknowledged."""
    signal_group(process, signal.SIGKILL)
    process.wait()


def stop_groups(processes: Iterable[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM each group's main process at once, SIGKILL what is left of the group once it exits or at the deadline.

    Only the main process: Celery's warm shutdown lets its pool finish the step under way, whereas a pool process
    that gets SIGTERM itself dies mid-step and its job waits for its lease to run out.
    """
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        kill_group(process)


def stop_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    stop_groups([process], timeout)
