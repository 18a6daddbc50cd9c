"""A whole service on this machine: broker (given or embedded), worker processes, the API.

``qkan-orch serve`` runs the API in the foreground (``serve_forever``); the
demo, the integration tests and the benchmark run it on a thread (``start``)
and talk to it over real HTTP. Both start the broker and the workers with the
same code, so the embedded default is exactly what the tests exercise.
``start_api_processes`` adds APIs as ``qkan-orch serve`` processes of their own
on the same broker and database, as several API replicas are deployed.

What it starts it supervises (``service.supervisor``): a worker or the
embedded Redis that dies is started again, Redis on the same port with the
same password and append-only file, so the workers reconnect by themselves
and the queue comes back. The data folder is claimed first
(``service.data_folder``): a second service on it is refused.
"""

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import uvicorn
from fastapi import FastAPI

from qkan_orch.service import data_folder
from qkan_orch.service.api.app import create_app
from qkan_orch.service.broker import celery_app
from qkan_orch.service.embedded import EmbeddedRedis
from qkan_orch.service.processes import (
    WORKER_QUEUES,
    free_port,
    kill_group,
    start_api,
    start_worker,
    stop_groups,
    wait_for_api,
)
from qkan_orch.service.settings import Settings, get_settings
from qkan_orch.service.store.database import session_scope, upgrade
from qkan_orch.service.store.keys import create_key
from qkan_orch.service.supervisor import Child, Supervisor


class LocalService:
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, concurrency: int | None = 2,
                 worker_include: str | None = None) -> None:
        """``env``: QKAN_* settings (over this process's environment); without QKAN_REDIS_URL in it an embedded
        Redis is started. ``concurrency``: processes per worker (None: the settings' default). ``worker_include``:
        extra task modules every worker imports (``qkan-orch worker --include``)."""
        self.data_dir = Path(data_dir)
        self.env = {"QKAN_DATA_DIR": str(self.data_dir), **(env or {})}
        self.concurrency = concurrency
        self.worker_include = worker_include
        self.redis: EmbeddedRedis | None = None
        self.supervisor = Supervisor()
        self._redis_child: Child | None = None
        self._worker_children: list[Child] = []
        self.worker_logs: list[Path] = []
        self._lock: TextIO | None = None
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.url = ""
        self.api_processes: list[subprocess.Popen] = []

    @property
    def workers(self) -> list[subprocess.Popen]:
        """The worker processes running now (a restarted worker replaces the one that died)."""
        return [child.process for child in self._worker_children]

    @property
    def settings(self) -> Settings:
        return Settings(**{k.removeprefix("QKAN_").lower(): v for k, v in self.env.items() if k.startswith("QKAN_")})

    def __enter__(self) -> "LocalService":
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @contextmanager
    def running(self, workers: int) -> Iterator["LocalService"]:
        """``start(workers)`` … ``stop()`` as a with block (``with LocalService(...)`` runs one worker)."""
        self.start(workers)
        try:
            yield self
        finally:
            self.stop()

    def start(self, workers: int = 1, api_thread: bool = True) -> None:
        """Broker, workers, API on a thread (unless ``api_thread`` is False: then ``start_api_processes`` starts
        the APIs), ready; if any part fails to start, whatever did start is stopped."""
        try:
            self._start_broker_and_workers(workers)
            if api_thread:
                self._start_api_thread()
        except BaseException:
            self.stop()
            raise

    def serve_forever(self, host: str, port: int, workers: int) -> None:
        """Broker, workers, then the API in the foreground until it is interrupted; everything stops with it.

        uvicorn shuts down gracefully on SIGTERM and then re-raises it: turned into SystemExit here, so the
        children are stopped rather than left behind (SIGINT already arrives as KeyboardInterrupt). While they
        are being stopped, further signals are ignored: a second Ctrl-C must not leave half of them running.
        """
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            self._start_broker_and_workers(workers)
            if self.redis is not None:  # this process is the service: get_settings() must name its broker
                os.environ["QKAN_REDIS_URL"] = self.redis.url
                get_settings.cache_clear()
            uvicorn.run(self.app(), host=host, port=port, log_level=self.settings.log_level.lower(),
                        access_log=self.settings.access_log)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.stop()

    def claim_data_dir(self) -> None:
        """Lock the data folder for this service (once); ``data_folder.FolderInUse`` if another one holds it."""
        if self._lock is None:
            self._lock = data_folder.claim(self.data_dir)

    def app(self) -> FastAPI:
        settings = self.settings
        return create_app(settings, celery=celery_app(settings))

    def _start_broker_and_workers(self, workers: int) -> None:
        self.claim_data_dir()
        upgrade(self.settings.resolved_database_url)
        if not self.env.get("QKAN_REDIS_URL"):
            self.redis = EmbeddedRedis(self.data_dir / "redis")
            first = self.redis.spawn()
            self._redis_child = self.supervisor.watch("the embedded Redis", self.redis.restart, first)
            self.redis.wait_ready(first)
            self.env["QKAN_REDIS_URL"] = self.redis.url
        for _ in range(workers):
            self.start_worker()

    def _start_api_thread(self) -> None:
        port = free_port()
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{port}"
        wait_for_api(self.url, check=self._check_api_thread)

    def _check_api_thread(self) -> None:
        if self.thread is not None and not self.thread.is_alive():
            raise RuntimeError(f"the API thread for {self.url} ended before it became ready")

    def start_api_processes(self, count: int = 1) -> list[str]:
        """``count`` more APIs, each its own ``qkan-orch serve`` process on this service's broker and database
        (what API replicas behind a load balancer run), started together and ready; returns their URLs. Each gets
        a data folder of its own under this one (serve locks its folder) and logs to api-n.log; ``stop`` stops
        them first."""
        if not self.env.get("QKAN_REDIS_URL"):
            raise RuntimeError("start the service first: its API processes use its broker, not one of their own")
        started: list[tuple[str, subprocess.Popen, Path]] = []
        for n in range(len(self.api_processes) + 1, len(self.api_processes) + count + 1):
            port, log = free_port(), self.data_dir / f"api-{n}.log"
            env = {**self.env, "QKAN_DATA_DIR": str(self.data_dir / f"api-{n}"),
                   "QKAN_DATABASE_URL": self.settings.resolved_database_url}  # not a database in its own folder
            started.append((f"http://127.0.0.1:{port}", start_api(env, port, log), log))
            self.api_processes.append(started[-1][1])
        for url, process, log in started:
            wait_for_api(url, check=lambda process=process, log=log: _check_api_process(process, log))
        return [url for url, _, _ in started]

    def start_worker(self, queues: str = WORKER_QUEUES) -> subprocess.Popen:
        """One more supervised ``qkan-orch worker`` process group; the first logs to worker.log, the n-th to
        worker-n.log (a restarted worker appends to its predecessor's log)."""
        n = len(self._worker_children)
        log = self.data_dir / ("worker.log" if n == 0 else f"worker-{n}.log")

        def launch() -> subprocess.Popen:
            return start_worker(self.env, queues=queues, concurrency=self.concurrency, log_file=log,
                                include=self.worker_include)

        def relaunch() -> subprocess.Popen:  # the dead worker's prefetched and countdown messages: ours to return
            if self.redis is not None:
                self.redis.hand_back(f"after the death of {log.stem}")
            return launch()

        self._worker_children.append(self.supervisor.watch(log.stem, relaunch, launch()))
        self.worker_logs.append(log)
        return self._worker_children[-1].process

    def kill_worker(self, process: subprocess.Popen) -> None:
        """SIGKILL the worker's whole process group, as a crash would: no warm shutdown, no acknowledgements;
        the supervisor starts it again."""
        kill_group(process)

    def create_key(self, name: str = "test", max_shots: int | None = None, max_cost: float | None = None,
                   admin: bool = False, rate_limit: float | None = None, max_active_jobs: int | None = None) -> str:
        with session_scope(self.settings.resolved_database_url) as session:
            return create_key(session, name, max_shots=max_shots, max_cost=max_cost, admin=admin,
                              rate_limit=rate_limit, max_active_jobs=max_active_jobs)[1]

    def stop(self) -> None:
        """The APIs, then (no restarts from here on) the workers, which finish their task, then Redis; then the
        data folder is free again."""
        stop_groups(self.api_processes)
        if self.server is not None:
            self.server.should_exit = True
            if self.thread is not None:
                self.thread.join(10)
        self.supervisor.stop()
        stop_groups(self.workers)
        if self._redis_child is not None:
            stop_groups([self._redis_child.process], timeout=5.0)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _check_api_process(process: subprocess.Popen, log: Path) -> None:
    if process.poll() is not None:
        raise RuntimeError(f"an API process exited ({process.returncode}) before it became ready; see {log}")


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
