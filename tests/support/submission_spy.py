"""A spy on the real simulators' ``submit`` inside a worker process: counts provider submissions on the backend
side, where a repeated round would show even if the service never recorded it.

A worker imports this module with ``--include support.submission_spy``. When QKAN_TEST_SUBMISSIONS names a
file, every ``submit`` of Aer and of IBM Runtime's local testing mode (the fake devices) appends one JSON line:
the backend's name and a hash of the circuits' parameters. The file outlives a SIGKILLed worker.

Every spied submission lasts at least twice ``PERSIST_AFTER``: a local round cheaper than that is written only
with the step's next write (``workers/inference_step.py``: redoing it after a crash costs less), and Aer's
rounds of a small window take 45–65 ms on a quiet machine, so without the floor a round might still be
unwritten when the next is sent, and a kill there would send it again. With it, every round is written before
the next is sent, as a provider's is, which is what the submission counts assume.

A test can make one submission wait first, so that a SIGKILL lands between two steps with nothing in flight:
``<log>.pause`` holding ``{"at": k, "seconds": s}`` makes the submission that finds k lines in the log sleep
s seconds before it is logged and sent; the file is consumed when the pause starts and ``<log>.paused`` is
created, so the test knows when to kill and a restarted worker does not pause again.
"""

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qkan_orch.backends.aer import AerBackend
from qkan_orch.backends.ibm import IBMBackend
from qkan_orch.circuits.batch import ActivationBatch, Parts
from qkan_orch.workers.inference_step import PERSIST_AFTER


def _digest(batch: ActivationBatch | Parts) -> str:
    parts = (batch,) if isinstance(batch, ActivationBatch) else batch
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.params.tobytes())
    return digest.hexdigest()


def _pause_if_asked(log: Path) -> None:
    control = Path(f"{log}.pause")
    if not control.exists():
        return
    pause = json.loads(control.read_text())
    done = len(log.read_text().splitlines()) if log.exists() else 0
    if done == pause["at"]:
        control.unlink()
        Path(f"{log}.paused").touch()
        time.sleep(float(pause["seconds"]))


def _spied(submit: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(submit)
    def spy(self: Any, batch: ActivationBatch | Parts, *args: Any, **kwargs: Any) -> Any:
        log = Path(os.environ["QKAN_TEST_SUBMISSIONS"])
        _pause_if_asked(log)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"backend": self.name, "batch": _digest(batch)}) + "\n")
        began = time.monotonic()
        handle = submit(self, batch, *args, **kwargs)
        time.sleep(max(0.0, 2 * PERSIST_AFTER - (time.monotonic() - began)))  # never a round cheap enough to defer
        return handle

    return spy


def submissions(log: Path) -> list[dict[str, str]]:
    """The submissions logged so far, oldest first."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


if os.environ.get("QKAN_TEST_SUBMISSIONS"):
    for backend in (AerBackend, IBMBackend):
        backend.submit = _spied(backend.submit)  # type: ignore[method-assign]
