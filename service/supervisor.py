"""Children that come back: a thread restarts a dead broker or worker, with back-off, and says so in the log.

``LocalService`` (and so ``qkan-orch serve``) hands every process it starts to
a ``Supervisor``. A child that dies is restarted after a delay that doubles
with each quick death (1 s up to 30 s) and is forgiven once the child has run
for a minute. ``stop`` ends the watching thread before anything is stopped:
a restart under way finishes and its process is in ``Child.process`` by then,
so the caller's stop reaches it too and nothing is left behind.
"""

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qkan_orch.service.processes import signal_group

log = logging.getLogger("qkan.serve")


@dataclass
class Child:
    """A supervised process: its name in the log, how to start it again, the current one, its restart schedule."""

    name: str
    launch: Callable[[], subprocess.Popen]
    process: subprocess.Popen
    delay: float  # before the next restart
    started: float = field(default_factory=time.monotonic)
    due: float | None = None  # when the restart of a dead process is due


class Supervisor:
    def __init__(self, interval: float = 0.25, first_delay: float = 1.0, max_delay: float = 30.0,
                 forgiven_after: float = 60.0) -> None:
        self.interval, self.first_delay, self.max_delay, self.forgiven_after = (
            interval, first_delay, max_delay, forgiven_after)
        self.children: list[Child] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="qkan-supervisor", daemon=True)

    def watch(self, name: str, launch: Callable[[], subprocess.Popen], process: subprocess.Popen | None = None
              ) -> Child:
        """Keep ``process`` (default: a new ``launch()``) running: when it dies, ``launch`` replaces it."""
        child = Child(name, launch, process or launch(), self.first_delay)
        self.children.append(child)
        if not self._thread.is_alive() and not self._stopping.is_set():
            self._thread.start()
        return child

    def stop(self) -> None:
        """No more restarts; returns once a restart under way has finished (its process is then a child's)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()

    def _watch(self) -> None:
        while not self._stopping.wait(self.interval):
            for child in list(self.children):
                if child.due is None and child.process.poll() is not None:
                    self._schedule(child)
                if child.due is not None and time.monotonic() >= child.due and not self._stopping.is_set():
                    self._relaunch(child)

    def _schedule(self, child: Child) -> None:
        dead = child.process
        ran = time.monotonic() - child.started
        if ran >= self.forgiven_after:
            child.delay = self.first_delay
        signal_group(dead, signal.SIGKILL)  # whatever it left behind in its group (a prefork pool)
        child.due = time.monotonic() + child.delay
        log.warning("%s (pid %d) exited with %s after %.0f s; restarting it in %g s",
                    child.name, dead.pid, dead.returncode, ran, child.delay)

    def _relaunch(self, child: Child) -> None:
        waited, child.delay = child.delay, min(2 * child.delay, self.max_delay)
        child.started = time.monotonic()
        try:
            child.process = child.launch()
        except Exception:
            child.due = child.started + child.delay
            log.exception("%s could not be restarted; trying again in %g s", child.name, child.delay)
            return
        child.due = None
        log.warning("%s restarted (pid %d) after %g s", child.name, child.process.pid, waited)
