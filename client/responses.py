"""What the API answers, as frozen dataclasses: one per response schema in ``service/api/schemas.py``.

Field names and their order are the JSON's (keyword-only fields, so a required
one may follow an optional one as in the schema). ``from_json`` converts each
field by its annotation (nested records, ISO timestamps, the job state) and
ignores fields it does not know, so a newer server with more fields still
parses; optional fields it leaves out take their defaults. Free-form JSON (a
model's spec, a job's options and placement, a backend's price) stays a dict.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import Enum
from functools import cache
from types import UnionType
from typing import Any, Generic, Self, TypeVar, Union, get_args, get_origin, get_type_hints

from qkan_orch.service.store.states import JobState


class _Response:
    """Adds ``from_json`` to a response dataclass."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        hints = _hints(cls)
        return cls(**{name: _convert(hint, data[name]) for name, hint in hints.items() if name in data})


@cache
def _hints(cls: type) -> dict[str, Any]:
    """The annotations of a dataclass's fields, resolved once per class (pages parse hundreds of jobs)."""
    resolved = get_type_hints(cls)
    return {f.name: resolved[f.name] for f in fields(cls)}


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = get_origin(hint)
    if origin in (Union, UnionType):
        choices = [arg for arg in get_args(hint) if arg is not type(None)]
        return _convert(choices[0], value) if len(choices) == 1 else value  # e.g. pack: int | "auto"
    if origin is list:
        return [_convert(get_args(hint)[0], item) for item in value]
    if hint is datetime:
        return _timestamp(value)
    if origin is None and isinstance(hint, type):  # not dict[...]: free-form JSON stays as it came
        if issubclass(hint, _Response):
            return hint.from_json(value)
        if issubclass(hint, Enum):
            return hint(value)
    return value


def _timestamp(text: str) -> datetime:
    """A timezone-aware UTC datetime: the service stores UTC, and SQLite gives it back without a zone."""
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True, kw_only=True)
class Model(_Response):
    id: str
    name: str
    spec: dict[str, Any]
    parameter_count: int
    content_hash: str
    source: str  # "upload" or "train"
    noise: dict[str, Any] | None = None  # {"device", "qubits"} a noise-aware model was trained for
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class Round(_Response):
    """One round of a job: ``rows`` circuits after deduplication serving ``requested`` activations."""

    number: int
    rows: int
    requested: int
    executions: int
    shots: int
    provider_job_ids: list[str]
    submitted_at: datetime
    finished_at: datetime | None = None
    seconds: float | None = None


@dataclass(frozen=True, kw_only=True)
class JobError(_Response):
    code: str
    message: str


@dataclass(frozen=True, kw_only=True)
class Estimate(_Response):
    """The upper bound computed before submission; ``cost`` in USD at list price, ``peak_bytes`` of worker memory."""

    tasks: int
    executions: int
    shots: int
    qpu_seconds: float
    cost: float
    peak_bytes: int = 0


@dataclass(frozen=True, kw_only=True)
class Quote(_Response):
    """What a submission would run and cost (``Client.estimate``); ``configured`` False: hardware quoted from its
    published limits, without an account, under ``assumptions``."""

    model_id: str
    backend: str
    samples: int
    rounds: int
    circuits: int
    shots: int | None
    width: int
    mitigation: dict[str, Any]
    estimate: Estimate
    price: dict[str, Any]
    configured: bool
    assumptions: list[str]
    within_budget: bool
    budget_message: str | None = None


@dataclass(frozen=True, kw_only=True)
class Job(_Response):
    """A job's state, progress, usage and timings (training jobs too: ``kind == "train"``)."""

    id: str
    kind: str  # "inference" or "train"
    model_id: str | None = None
    backend: str
    queue: str
    state: JobState
    rounds_done: int
    rounds_total: int
    samples: int
    shots: int | None = None
    pack: int | str | None = None  # copies per circuit, "auto", or None for the backend's default
    options: dict[str, Any] = field(default_factory=dict)
    estimate: Estimate | None = None
    placement: dict[str, Any] | None = None
    mitigation: dict[str, Any] | None = None  # {"method": …, and its settings}
    qpu_seconds: float = 0.0
    cost: float = 0.0
    shots_used: int
    executions: int
    provider_job_ids: list[str] = field(default_factory=list)
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queued_seconds: float | None = None
    run_seconds: float | None = None
    error: JobError | None = None
    rounds: list[Round] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class JobResult(_Response):
    """``GET /v1/jobs/{id}/result``: outputs and standard errors, or a training job's model and losses."""

    job_id: str
    outputs: list[list[float]] | None = None
    stderr: list[list[float]] | None = None
    raw_outputs: list[list[float]] | None = None  # mitigated jobs: the same rounds without mitigation
    raw_stderr: list[list[float]] | None = None
    layers: list[list[list[float]]] | None = None
    activations: list[list[list[list[float]]]] | None = None  # per layer: samples × out × in
    model_id: str | None = None
    losses: list[float] | None = None


T = TypeVar("T", bound=_Response)


@dataclass(frozen=True, kw_only=True)
class Page(Generic[T]):
    """One page of a listing, newest first; ``total`` counts every match."""

    items: list[T]
    total: int
    limit: int
    offset: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any], item: Callable[[Mapping[str, Any]], T]) -> "Page[T]":
        return cls(items=[item(entry) for entry in data["items"]], total=data["total"], limit=data["limit"],
                   offset=data["offset"])


@dataclass(frozen=True, kw_only=True)
class Agreement(_Response):
    """A backend's outputs against the reference's (``comparisons.agreement``); null where not finite."""

    n: int
    rmse: float
    max_error: float
    sigma: float
    mean_z2: float | None
    p_value: float
    chi2_n: int
    slope: float | None
    intercept: float | None


@dataclass(frozen=True, kw_only=True)
class EdgeError(_Response):
    output: int
    input: int
    rmse: float
    qubit: int | None = None  # the physical qubit most of its samples ran on, where placed
    qubit_share: float | None = None  # the share of its samples that ran there


@dataclass(frozen=True, kw_only=True)
class LayerAgreement(_Response):
    """A QKAN layer's output and edge-activation RMSE against the reference's, and its worst edges."""

    layer: int
    output_rmse: float
    activation_rmse: float | None
    worst_edges: list[EdgeError]


@dataclass(frozen=True, kw_only=True)
class Compared(_Response):
    """One backend's job in a comparison and, once it and the reference's succeeded, how they agree."""

    backend: str
    job: Job
    agreement: Agreement | None = None
    raw_agreement: Agreement | None = None
    layers: list[LayerAgreement] | None = None


@dataclass(frozen=True, kw_only=True)
class Comparison(_Response):
    id: str
    model_id: str | None
    reference: Compared
    backends: list[Compared]
    finished: bool
    estimate: Estimate
    created_at: datetime


@dataclass(frozen=True, kw_only=True)
class Backend(_Response):
    """A backend's capabilities and live status, as ``GET /v1/backends`` lists them."""

    name: str
    kind: str
    qubits: int
    noise: str
    max_shots: int | None
    default_pack: int
    max_pack: int
    options: list[str]
    online: bool
    queue: str
    status_message: str = ""
    pending_jobs: int = 0
    provider_queue: int = 0
    calibration_time: str | None = None
    calibration_age_hours: float | None = None
    price: dict[str, Any] = field(default_factory=dict)
    configured: bool = True
    enable_with: str | None = None


@dataclass(frozen=True, kw_only=True)
class Queue(_Response):
    name: str
    depth: int


@dataclass(frozen=True, kw_only=True)
class Worker(_Response):
    name: str
    queues: list[str]
    active: int
    reserved: int
    concurrency: int | None = None  # task processes of its pool (unknown if it did not answer the stats question)


@dataclass(frozen=True, kw_only=True)
class Queues(_Response):
    """``GET /v1/queues``: broker depths, live workers, jobs by state, throughput of the last minute."""

    queues: list[Queue]
    workers: list[Worker]
    jobs_by_state: dict[str, int]
    finished_last_minute: int
