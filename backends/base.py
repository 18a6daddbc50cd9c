"""The backend interface every executor implements (DESIGN §5).

Small on purpose, like Qiskit's primitives: ``submit`` takes a whole
ActivationBatch and returns at once with a handle; ``poll`` returns ``None``
while the work is pending, then a BatchResult. Local simulators may finish
inside ``submit``; real providers must not block while a job is queued.
"""

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from qkan_orch.circuits.batch import ActivationBatch, BatchResult, Parts
from qkan_orch.models.errors import InputError

Pack = int | Literal["auto"] | None
DEFAULT_SHOTS = 1000  # shots per circuit on a sampling backend when a run names none (CLI and API alike)


@dataclass(frozen=True)
class Price:
    """Public list prices in USD, from the dated table in ``backends.pricing``."""

    per_task: float = 0.0
    per_shot: float = 0.0
    per_second: float = 0.0  # QPU time (IBM Quantum pay-as-you-go)
    source: str = "free (local simulator)"

    def cost(self, tasks: int, shots: int, seconds: float = 0.0) -> float:
        return tasks * self.per_task + shots * self.per_shot + seconds * self.per_second


@dataclass(frozen=True)
class Estimate:
    """What a job will use before it is submitted: the basis of budgets and the user's quote."""

    tasks: int  # provider jobs / quantum tasks
    executions: int  # circuit executions (packed circuits × rounds)
    shots: int  # executions × shots per circuit
    qpu_seconds: float
    cost: float
    peak_bytes: int = 0  # worker memory of the largest round (round_bytes), whatever the backend


class SeedStream:
    """Where a sub-submission's shots come from when the options name a seed: its own stream per chunk of a
    round and per part of a submission. With one seed for all, chunks would draw the same numbers and the rows
    at every fold scale would share their shot noise, which mitigation's standard errors assume independent.
    Index 0 keeps the seed, so an unsplit run samples what it always did; the others get
    ``SeedSequence([seed, kind, index])``, which no other (kind, index) meets."""

    CHUNK = 1  # index: the chunk's first circuit in its round (backends.chunked_rounds)
    PART = 2  # index: the part's position in the submission (backends.sampling)

    @staticmethod
    def apply(options: dict[str, Any] | None, kind: int, index: int) -> dict[str, Any] | None:
        seed = (options or {}).get("seed")
        if not index or isinstance(seed, bool) or not isinstance(seed, int):
            return options
        return {**(options or {}), "seed": int(np.random.SeedSequence([seed, kind, index]).generate_state(1)[0])}


def round_bytes(rows: int, columns: int) -> int:
    """Worker memory a round of ``rows`` circuits with ``columns`` parameters each needs, at most.

    Measured on ``exact``: the compiled matrix and its transposed copy take 16 bytes per parameter; slots,
    amplitudes, read-outs and activations about 400 per row. A local sampling backend's own circuit objects
    (5–30 kB per row) add only a chunk's worth, since it runs long rounds in chunks of a task slice
    (``backends.chunked_rounds``). A training step over the same rows (autograd keeps every layer's graph)
    stays under it too.
    """
    return rows * (16 * columns + 400)


@dataclass(frozen=True)
class Capabilities:
    name: str
    kind: str  # "analytic" | "simulator" | "noisy simulator" | "qpu"
    qubits: int
    noise: str
    max_shots: int | None = None
    max_circuits: int | None = None
    native_gates: tuple[str, ...] = ()
    default_pack: int = 1
    max_pack: int = 1
    options: tuple[str, ...] = ()
    price: Price = field(default_factory=Price)
    exact_probabilities: bool = False  # computes each row's p0 before sampling it (the emulators)

    @property
    def shot_based(self) -> bool:
        return self.kind != "analytic"

    @property
    def exact_without_shots(self) -> bool:
        """Whether a run without shots gives exact probabilities (standard errors 0): always on an analytic
        backend, and on a noisy one that computes its probabilities before sampling them (``emulate:*``), so
        such a run can be a comparison's reference and its read-out calibration is exact."""
        return not self.shot_based or self.exact_probabilities

    def shots_for(self, shots: int | None) -> int | None:
        """The shots a run uses here: none on an analytic backend; when not given, none where that means exact
        probabilities, else ``DEFAULT_SHOTS``."""
        if not self.shot_based:
            return None
        if shots is None:
            return None if self.exact_without_shots else DEFAULT_SHOTS
        return shots


@dataclass(frozen=True)
class Status:
    online: bool
    queue_length: int = 0
    calibration_time: str | None = None  # ISO 8601, UTC
    message: str = ""


@dataclass
class Handle:
    """A submission: provider job ids, or the finished result for local executors.

    Handles of pending provider jobs are persisted between polls, so their
    ``data`` must be JSON; a local result is absorbed at once and never stored.
    """

    backend: str
    provider_job_ids: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    result: BatchResult | None = None

    def to_json(self) -> dict[str, Any]:
        if self.result is not None:
            raise ValueError("a finished local handle is absorbed, not stored")
        return {"backend": self.backend, "provider_job_ids": self.provider_job_ids, "data": self.data}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Handle":
        return cls(obj["backend"], list(obj["provider_job_ids"]), dict(obj["data"]))


class TransientBackendError(RuntimeError):
    """A provider hiccup (network, throttling, maintenance): retry with backoff, then fail."""


class ProviderJobLost(TransientBackendError):
    """The provider no longer knows the job (a local-testing job whose process died): run the round again."""


class ProviderJobFailed(RuntimeError):
    """The provider ran the job and reports an error or a cancellation: the job fails with its message."""


class Backend(ABC):
    name: str
    # Runs here and returns its result from ``submit``, so a round split into chunks of rows costs what it costs
    # whole: workers run long rounds in chunks (backends.chunked_rounds), with cancel and progress between them.
    chunkable: bool = False

    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    def status(self) -> Status:
        return Status(online=True)

    @abstractmethod
    def submit(
        self,
        batch: ActivationBatch | Parts,
        shots: int | None = None,
        pack: Pack = None,
        options: dict[str, Any] | None = None,
    ) -> Handle:
        """Start running ``batch`` (or several parts as one provider job, their rows in order in the result)."""

    def poll(self, handle: Handle) -> BatchResult | None:
        return handle.result

    def cancel(self, handle: Handle) -> None:  # noqa: B027 - a no-op is the right default
        """Local executions finish inside submit: there is nothing left to cancel."""

    def continuing(self, result: BatchResult) -> "Backend":
        """The backend for the next chunk of the round whose previous chunk gave ``result``: itself, unless
        it keeps something measured once per round (mitigation's read-out calibration)."""
        return self

    def auto_pack(self, options: dict[str, Any]) -> int:
        """The width ``pack="auto"`` means here: only calibrated backends (calibration.py) have one to choose."""
        raise InputError("pack", f"'{self.name}' publishes no calibration to choose a width from; give pack=<W> "
                         f"(default {self.capabilities().default_pack})")

    def round_width(self, width: int, pack: Pack, rows: int) -> int:
        """The copies per circuit a round of ``rows`` rows runs with, given the validated ``width``."""
        return width

    def tasks_for(self, executions: int, shots: int, pack: Pack, options: dict[str, Any]) -> int:
        """Provider jobs (tasks) one round of ``executions`` circuits at ``shots`` each needs."""
        return 1 if executions else 0

    def seconds_for(self, executions: int, shots: int, tasks: int) -> float:
        """Estimated billed QPU seconds of one round run as ``tasks`` provider jobs; local backends bill none."""
        return 0.0

    def estimate(self, rows: list[int], shots: int | None, pack: Pack = None,
                 options: dict[str, Any] | None = None, columns: int = 0) -> Estimate:
        """Upper bound on tasks, executions, shots, cost and memory for rounds of at most ``rows[k]`` rows
        of ``columns`` parameters each."""
        shots, width, options = self.validate(shots, pack, options)
        executions = [math.ceil(r / width) if self.capabilities().shot_based else 0 for r in rows]
        return self.quote(executions, shots, pack, options, round_bytes(max(rows, default=0), columns))

    def quote(self, executions: list[int], shots: int | None, pack: Pack, options: dict[str, Any],
              peak_bytes: int) -> Estimate:
        """The estimate of rounds of ``executions[k]`` circuit executions each (the tasks, seconds and price
        this backend would bill for them)."""
        per_circuit = shots or 0
        tasks = [self.tasks_for(e, per_circuit, pack, options) for e in executions]
        seconds = sum(self.seconds_for(e, per_circuit, t) for e, t in zip(executions, tasks, strict=True))
        total_shots = sum(executions) * per_circuit
        return Estimate(sum(tasks), sum(executions), total_shots, seconds,
                        self.capabilities().price.cost(sum(tasks), total_shots, seconds), peak_bytes)

    def validate(
        self, shots: int | None, pack: Pack, options: dict[str, Any] | None
    ) -> tuple[int | None, int, dict[str, Any]]:
        """Check shots, packing and options against the capabilities; return them resolved."""
        caps = self.capabilities()
        if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots <= 0):
            raise InputError("shots", f"must be a positive integer, got {shots!r}")
        if caps.shot_based and shots is None:
            raise InputError("shots", f"backend '{self.name}' samples: give a shot count")
        if caps.max_shots is not None and shots is not None and shots > caps.max_shots:
            raise InputError("shots", f"{shots} exceeds the maximum of {caps.max_shots} on '{self.name}'")
        options = dict(options or {})
        unknown = sorted(set(options) - set(caps.options))
        if unknown:
            allowed = ", ".join(caps.options) or "none"
            raise InputError(f"options.{unknown[0]}", f"not an option of '{self.name}' (allowed: {allowed})")
        width = caps.default_pack if pack is None else self.auto_pack(options) if pack == "auto" else pack
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= caps.max_pack:
            raise InputError(
                "pack", f"must be \"auto\" or an integer in 1..{caps.max_pack} on '{self.name}' "
                f"({caps.qubits} qubits), got {pack!r}")
        return shots, width, options
