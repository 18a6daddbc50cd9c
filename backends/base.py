"""The backend interface every executor implements (DESIGN §5).

Small on purpose, like Qiskit's primitives: ``submit`` takes a whole
ActivationBatch and returns at once with a handle; ``poll`` returns ``None``
while the work is pending, then a BatchResult. Local simulators may finish
inside ``submit``; real providers must not block while a job is queued.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from circuits.batch import ActivationBatch, BatchResult
from models.errors import InputError


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

    @property
    def shot_based(self) -> bool:
        return self.kind != "analytic"


@dataclass(frozen=True)
class Status:
    online: bool
    queue_length: int = 0
    calibration_time: str | None = None
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


class Backend(ABC):
    name: str

    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    def status(self) -> Status:
        return Status(online=True)

    @abstractmethod
    def submit(
        self,
        batch: ActivationBatch,
        shots: int | None = None,
        pack: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Handle: ...

    def poll(self, handle: Handle) -> BatchResult | None:
        return handle.result

    def cancel(self, handle: Handle) -> None:  # noqa: B027 - a no-op is the right default
        """Local executions finish inside submit: there is nothing left to cancel."""

    def validate(
        self, shots: int | None, pack: int | None, options: dict[str, Any] | None
    ) -> tuple[int | None, int, dict[str, Any]]:
        """Check shots, packing and options against the capabilities; return them resolved."""
        caps = self.capabilities()
        if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots <= 0):
            raise InputError("shots", f"must be a positive integer, got {shots!r}")
        if caps.shot_based and shots is None:
            raise InputError("shots", f"backend '{self.name}' samples: give a shot count")
        if caps.max_shots is not None and shots is not None and shots > caps.max_shots:
            raise InputError("shots", f"{shots} exceeds the maximum of {caps.max_shots} on '{self.name}'")
        width = caps.default_pack if pack is None else pack
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= caps.max_pack:
            raise InputError("pack", f"must be an integer in 1..{caps.max_pack} on '{self.name}', got {pack!r}")
        options = dict(options or {})
        unknown = sorted(set(options) - set(caps.options))
        if unknown:
            allowed = ", ".join(caps.options) or "none"
            raise InputError(f"options.{unknown[0]}", f"not an option of '{self.name}' (allowed: {allowed})")
        return shots, width, options
