"""A whole service in this process: broker (given or embedded), worker processes, API thread.

``qkan-orch demo`` and the integration tests use it; it is the embedded
default of ``qkan-orch serve`` with the API on a background thread, so the
caller can talk to it over real HTTP.
"""

import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from qkan_orch.service.api.app import create_app
from qkan_orch.service.embedded import EmbeddedRedis, free_port, start_worker, stop_process
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.database import session_scope, upgrade
from qkan_orch.service.store.keys import create_key


class LocalService:
    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, concurrency: int = 2) -> None:
        """``env``: QKAN_* settings; without QKAN_REDIS_URL an embedded Redis is started."""
        self.data_dir = Path(data_dir)
        self.env = {"QKAN_DATA_DIR": str(self.data_dir), **(env or {})}
        self.concurrency = concurrency
        self.redis: EmbeddedRedis | None = None
        self.workers: list[subprocess.Popen] = []
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
        """Broker, workers, API; if any part fails to start, whatever did start is stopped again."""
        try:
            self._start(workers)
        except BaseException:
            self.stop()
            raise

    def _start(self, workers: int) -> None:
        if "QKAN_REDIS_URL" not in self.env:
            self.redis = EmbeddedRedis(self.data_dir / "redis")
            self.env["QKAN_REDIS_URL"] = self.redis.start()
        upgrade(self.settings.resolved_database_url)
        for _ in range(workers):
            self.start_worker()
        port = free_port()
        config = uvicorn.Config(create_app(self.settings), host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{port}"
        self._wait_ready()

    def start_worker(self, queues: str = "local,ibm,braket") -> subprocess.Popen:
        log = self.data_dir / f"worker-{len(self.workers)}.log"
        process = start_worker(self.env, queues=queues, concurrency=self.concurrency, log_file=log)
        self.workers.append(process)
        return process

    def kill_worker(self, process: subprocess.Popen) -> None:
        """SIGKILL the worker's whole process group: no warm shutdown, no acknowledgements."""
        os.killpg(process.pid, 9)
        process.wait()

    def create_key(self, name: str = "test", max_shots: int | None = None, max_cost: float | None = None) -> str:
        with session_scope(self.settings.resolved_database_url) as session:
            return create_key(session, name, max_shots=max_shots, max_cost=max_cost)[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            if self.thread is not None:
                self.thread.join(10)
        for process in self.workers:
            stop_process(process)
        self.workers.clear()
        if self.redis is not None:
            self.redis.stop()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"the API at {self.url} did not become ready")
