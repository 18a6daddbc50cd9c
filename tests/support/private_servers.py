"""A Redis server and a PostgreSQL cluster of a test's own, which the test may stop and start again.

The machine's shared Redis and PostgreSQL must never be restarted; a test about
a broker or database going away owns one of these instead, on a free loopback
port. We run as root, and PostgreSQL refuses to: the cluster is initialised and
run as the ``postgres`` user, in a folder under /tmp that user can reach
(pytest's own temporary folders are private to root).
"""

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from qkan_orch.service.embedded import EmbeddedRedis
from qkan_orch.service.processes import free_port, wait_until
from service_env import unavailable


class PrivateRedis:
    """A redis-server on a fixed port and append-only file, so it can die and come back with or without its data:
    the embedded stack's server (``EmbeddedRedis``), without the hand-back of unacknowledged messages its
    supervisor does after a restart — a production broker restarted by its operator does not do that."""

    def __init__(self, folder: Path) -> None:
        self.server = EmbeddedRedis(folder)
        self.folder, self.url = self.server.folder, self.server.url
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = self.server.spawn()
        self.server.wait_ready(self.process)

    def stop(self) -> None:
        """SIGTERM, as ``docker compose stop`` sends: Redis writes its append-only file out and exits."""
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
            self.process = None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def forget(self) -> None:
        """Delete the stopped server's data: the next start is a broker that lost every message."""
        assert self.process is None, "stop the server before deleting its data"
        shutil.rmtree(self.folder)  # the next start writes its configuration again


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        unavailable("no PostgreSQL server binaries under /usr/lib/postgresql")
    return found[-1].parent


class PrivatePostgres:
    """A PostgreSQL cluster (trust authentication, user postgres) on a free loopback port; ``stop`` is
    ``pg_ctl stop -m immediate``: every connection dies at once, as when the server crashes or is killed."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.folder = Path(tempfile.mkdtemp(prefix="qkan-test-pg-"))
        self.data, self.port = self.folder / "data", free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        shutil.chown(self.folder, "postgres", "postgres")
        self._as_postgres(self.bin / "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(self.bin / "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"),
                          "-o", options, "-w", "start")
        wait_until(self._answers, "the private PostgreSQL", 30)

    def stop(self) -> None:
        self._as_postgres(self.bin / "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs and delete the cluster."""
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _answers(self) -> bool:
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", connect_timeout=2):
            return True

    def _as_postgres(self, *command: str | Path) -> None:
        runuser = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*runuser, *map(str, command)], check=True, capture_output=True, timeout=60)
