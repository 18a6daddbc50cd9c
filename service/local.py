"""A whole service on this machine: broker (given or embedded), worker processes, the API.

``qkan-orch serve`` runs the API in the foreground (``serve_forever``); the
demo, the integration tests and the benchmark run it on a thread (``start``)
and talk to it over real HTTP. Both start the broker and the workers with the
same code, so the embedded default is exactly what the tests exercise.
"""

import os
import signal
import subprocess
import threading
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from qkan_orch.service.api.app import create_app
from qkan_orch.service.broker import celery_app
from qkan_orch.service.embedded import EmbeddedRedis
from qkan_orch.service.processes import WORKER_QUEUES, free_port, kill_group, start_worker, stop_group, wait_for_api
from qkan_orch.service.settings import Settings, get_settings
from qkan_orch.service.store.database import session_scope, upgrade
from qkan_orch.service.store.keys import create_key


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
        self.workers: list[subprocess.Popen] = []
        self.worker_logs: list[Path] = []
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.url = ""

    @property
    def settings(self) -> Settings:
        return Settings(**{k.removeprefix("QKAN_").lower(): v for k, v in self.env.items() if k.startswith("QKAN_")})

    def __enter__(self) -> "LocalService":
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self, workers: int = 1) -> None:
        """Broker, workers, API on a thread, ready; if any part fails to start, whatever did start is stopped."""
        try:
            self._start_broker_and_workers(workers)
            self._start_api_thread()
        except BaseException:
            self.stop()
            raise

    def serve_forever(self, host: str, port: int, workers: int) -> None:
        """Broker, workers, then the API in the foreground until it is interrupted; everything stops with it.

        uvicorn shuts down gracefully on SIGTERM and then re-raises it: turned into SystemExit here, so the
        children are stopped rather than left behind (SIGINT already arrives as KeyboardInterrupt).
        """
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            self._start_broker_and_workers(workers)
            if self.redis is not None:  # this process is the service: get_settings() must name its broker
                os.environ["QKAN_REDIS_URL"] = self.redis.url
                get_settings.cache_clear()
            uvicorn.run(self.app(), host=host, port=port, log_level=self.settings.log_level.lower())
        finally:
            self.stop()

    def app(self) -> FastAPI:
        settings = self.settings
        return create_app(settings, celery=celery_app(settings))

    def _start_broker_and_workers(self, workers: int) -> None:
        upgrade(self.settings.resolved_database_url)
        if not self.env.get("QKAN_REDIS_URL"):
            self.redis = EmbeddedRedis(self.data_dir / "redis")
            self.env["QKAN_REDIS_URL"] = self.redis.start()
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

    def start_worker(self, queues: str = WORKER_QUEUES) -> subprocess.Popen:
        """One more ``qkan-orch worker`` process group; the first logs to worker.log, the n-th to worker-n.log."""
        n = len(self.workers)
        log = self.data_dir / ("worker.log" if n == 0 else f"worker-{n}.log")
        process = start_worker(self.env, queues=queues, concurrency=self.concurrency, log_file=log,
                               include=self.worker_include)
        self.workers.append(process)
        self.worker_logs.append(log)
        return process

    def kill_worker(self, process: subprocess.Popen) -> None:
        """SIGKILL the worker's whole process group: no warm shutdown, no acknowledgements."""
        kill_group(process)

    def create_key(self, name: str = "test", max_shots: int | None = None, max_cost: float | None = None) -> str:
        with session_scope(self.settings.resolved_database_url) as session:
            return create_key(session, name, max_shots=max_shots, max_cost=max_cost)[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            if self.thread is not None:
                self.thread.join(10)
        for process in self.workers:
            stop_group(process)
        self.workers.clear()
        if self.redis is not None:
            self.redis.stop()


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)
