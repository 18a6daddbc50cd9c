"""Test backends, registered through the QKAN_BACKEND_PLUGINS mechanism.

``test:counting`` is the exact simulator that first waits ``delay`` seconds,
then appends one line per batch it executes to the file ``log`` — so a test
can count, across worker processes and restarts, how often each round ran.
``delay`` may be a list: entry k for a batch that finds k lines in ``log``
already (the last entry for any later one). Before its delay it appends the
pid of the worker (the pool's parent process) to ``log``.started, so a test
can tell which worker runs a round.
``test:pending`` accepts a batch like a provider would and stays pending for
``pending_polls`` polls (counted in a file next to ``log``), never blocking;
with ``later_polls``, every provider job after the first one that file saw
stays pending for that many polls instead.
``test:unsteady`` is ``test:pending`` with an outage: each round's submit
raises a transient error ``submit_failures`` times, and each provider job's
poll ``poll_failures`` times, before they answer (-1: never); submits, polls
and cancels are logged next to ``log``.
"""

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from qkan_orch.backends.base import Capabilities, Handle, Price, TransientBackendError
from qkan_orch.backends.exact import ExactBackend, exact_p0
from qkan_orch.circuits.batch import ActivationBatch, BatchResult, Segment, Template


class _TestBackend(ExactBackend):
    """The exact simulator under another name, accepting the options its test needs."""

    options: tuple[str, ...] = ()
    chunkable = False  # one submission per round: the tests count them, and test:pending waits at a "provider"

    def capabilities(self) -> Capabilities:
        caps = super().capabilities()
        return Capabilities(**{**caps.__dict__, "name": self.name, "options": self.options})


class CountingBackend(_TestBackend):
    name = "test:counting"
    options = ("delay", "log")

    def submit(self, batch: ActivationBatch, shots: int | None = None, pack: int | None = None,
               options: dict[str, Any] | None = None) -> Handle:
        options = options or {}
        delay = options.get("delay", 0)
        with open(options["log"] + ".started", "a", encoding="utf-8") as fh:
            fh.write(f"{os.getppid()}\n")
        if isinstance(delay, list):
            done = len(Path(options["log"]).read_text().splitlines()) if os.path.exists(options["log"]) else 0
            delay = delay[min(done, len(delay) - 1)]
        time.sleep(float(delay))
        with open(options["log"], "a", encoding="utf-8") as fh:
            fh.write(hashlib.sha256(batch.params.tobytes()).hexdigest() + "\n")
        return super().submit(batch, shots, pack, {})


class PendingBackend(_TestBackend):
    """A provider whose jobs wait in a queue: submit returns ids, poll says pending N times."""

    name = "test:pending"
    options = ("pending_polls", "later_polls", "log")

    def submit(self, batch: ActivationBatch, shots: int | None = None, pack: int | None = None,
               options: dict[str, Any] | None = None) -> Handle:
        options = options or {}
        job_id = hashlib.sha256(batch.params.tobytes()).hexdigest()[:16]
        data = {"params": batch.params.tolist(), "ansatz": batch.template.ansatz, "reps": batch.template.reps,
                "pending_polls": int(options.get("pending_polls", 1)), "log": options["log"]}
        if "later_polls" in options:
            data["later_polls"] = int(options["later_polls"])
        return Handle(self.name, provider_job_ids=[f"pending-{job_id}"], data=data)

    def poll(self, handle: Handle) -> BatchResult | None:
        polls = Path(handle.data["log"] + ".polls")
        with open(polls, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"job": handle.provider_job_ids[0], "at": time.time()}) + "\n")
        lines = polls.read_text().splitlines()
        seen = sum(handle.provider_job_ids[0] in line for line in lines)
        first = json.loads(lines[0])["job"] == handle.provider_job_ids[0]
        pending = handle.data["pending_polls"]
        if not first:
            pending = handle.data.get("later_polls", pending)
        if seen <= pending:
            return None
        params = np.asarray(handle.data["params"], dtype=np.float64)
        batch = ActivationBatch(Template(handle.data["ansatz"], handle.data["reps"]), params,
                                (Segment("x", np.zeros((0, 0, 0), dtype=np.int64)),), "z")
        p0 = exact_p0(batch)
        return BatchResult(p0=p0, p0_stderr=np.zeros_like(p0), provider_job_ids=handle.provider_job_ids)

    def cancel(self, handle: Handle) -> None:
        with open(handle.data["log"] + ".cancelled", "a", encoding="utf-8") as fh:
            fh.write(handle.provider_job_ids[0] + "\n")


class UnsteadyBackend(PendingBackend):
    """A provider in an outage: submits and polls fail transiently a given number of times each, or forever."""

    name = "test:unsteady"
    options = ("pending_polls", "submit_failures", "poll_failures", "log")

    def submit(self, batch: ActivationBatch, shots: int | None = None, pack: int | None = None,
               options: dict[str, Any] | None = None) -> Handle:
        options = options or {}
        job_id = hashlib.sha256(batch.params.tobytes()).hexdigest()[:16]
        _fail_unless_recovered(Path(options["log"] + ".submits"), job_id, int(options.get("submit_failures", 0)),
                               "submit")
        handle = super().submit(batch, shots, pack, {**options, "pending_polls": options.get("pending_polls", 0)})
        handle.data["poll_failures"] = int(options.get("poll_failures", 0))
        return handle

    def poll(self, handle: Handle) -> BatchResult | None:
        job_id = handle.provider_job_ids[0]
        _fail_unless_recovered(Path(handle.data["log"] + ".unsteady-polls"), job_id, handle.data["poll_failures"],
                               "poll")
        return super().poll(handle)


def _fail_unless_recovered(log: Path, key: str, failures: int, call: str) -> None:
    """Log a call for ``key``; raise a transient error if it is among the first ``failures`` (-1: all of them)."""
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(key + "\n")
    calls = log.read_text().splitlines().count(key)
    if failures < 0 or calls <= failures:
        raise TransientBackendError(f"provider unavailable ({call} {calls} of {key})")


class FlakyBackend(_TestBackend):
    """Raises a transient provider error on its first ``failures`` submissions (counted in ``log``)."""

    name = "test:flaky"
    options = ("failures", "log")

    def submit(self, batch: ActivationBatch, shots: int | None = None, pack: int | None = None,
               options: dict[str, Any] | None = None) -> Handle:
        options = options or {}
        log = Path(options["log"])
        attempts = len(log.read_text().splitlines()) if log.exists() else 0
        with open(log, "a", encoding="utf-8") as fh:
            fh.write("attempt\n")
        if attempts < int(options.get("failures", 1)):
            raise TransientBackendError(f"provider busy (attempt {attempts + 1})")
        return super().submit(batch, shots, pack, {})


class LeakyBackend(_TestBackend):
    """An SDK that puts the account's secret in its error: the service must scrub it everywhere."""

    name = "test:leaky"
    options = ("transient",)

    def submit(self, batch: ActivationBatch, shots: int | None = None, pack: int | None = None,
               options: dict[str, Any] | None = None) -> Handle:
        secret = os.environ.get("QKAN_IBM_TOKEN", "")
        if (options or {}).get("transient"):
            raise TransientBackendError(f"401 for token={secret}")
        raise RuntimeError(f"authentication failed: token={secret} rejected")


class PricedBackend(_TestBackend):
    """Exact results billed like a QPU (USD 0.30 per task, 0.001 per shot): budgets are checked against it."""

    name = "test:priced"

    def capabilities(self) -> Capabilities:
        caps = super().capabilities()
        return Capabilities(**{**caps.__dict__, "kind": "qpu", "max_pack": 4, "max_shots": 100_000,
                               "price": Price(per_task=0.30, per_shot=0.001, source="test")})

    def submit(self, batch: ActivationBatch, shots: int | None = None, pack: int | None = None,
               options: dict[str, Any] | None = None) -> Handle:
        shots, width, _ = self.validate(shots, pack, options)
        p0 = exact_p0(batch)
        executions = -(-batch.num_rows // width)
        cost = self.capabilities().price.cost(1, executions * (shots or 0))
        result = BatchResult(p0=p0, p0_stderr=np.zeros_like(p0), shots=shots or 0, executions=executions, cost=cost)
        return Handle(self.name, result=result)


def get_backend(name: str) -> Any:
    factory = {"test:counting": CountingBackend, "test:pending": PendingBackend, "test:flaky": FlakyBackend,
               "test:leaky": LeakyBackend, "test:priced": PricedBackend, "test:unsteady": UnsteadyBackend}
    return factory[name]() if name in factory else None
