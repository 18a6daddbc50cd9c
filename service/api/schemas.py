"""Request and response bodies, with the examples the OpenAPI page shows."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from qkan_orch.backends.base import DEFAULT_SHOTS
from qkan_orch.service.store.states import JobState


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: str
    name: str
    spec: dict[str, Any]
    parameter_count: int = Field(description="Trainable parameters")
    content_hash: str = Field(description="SHA-256 of the stored safetensors bytes")
    source: Literal["upload", "train"]
    noise: dict[str, Any] | None = Field(None, description="Noise-aware training: the device and physical qubits "
                                         'the parameters compensate, e.g. {"device": "fake_melbourne", "qubits": '
                                         "[0, 8, 1, 11]}; null when trained noise-free")
    created_at: datetime


class Page(BaseModel):
    total: int
    limit: int
    offset: int


class ModelPage(Page):
    items: list[ModelOut]


Inputs = Annotated[list[list[float]] | list[list[list[float]]], Field(
    description="One sample per row, width = the model's input width; for a sequence model one window per sample "
                "(steps × features, or steps alone for one feature)")]


class JobRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra={
            "examples": [{
                "model_id": "6f1c2d3e-0000-4000-8000-000000000000",
                "inputs": [[0.1, -0.5], [0.7, 0.2]],
                "backend": "aer:fake_sherbrooke",
                "shots": 4000,
                "pack": 4,
                "options": {"seed": 1},
                "idempotency_key": "run-2026-11-27-a",
            }]
        },
    )

    model_id: str = Field(min_length=1, max_length=64)
    inputs: Inputs
    backend: str = Field("exact", min_length=1, max_length=200, description="See GET /v1/backends")
    shots: int | None = Field(None, ge=1,
                              description=f"Shots per circuit (default {DEFAULT_SHOTS} on sampling backends)")
    pack: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] | None = Field(
        None, description='Template copies per circuit; "auto" picks them from calibration (default: backend\'s)')
    options: dict[str, Any] = Field(default_factory=dict, description="Backend options, e.g. {\"seed\": 1}")
    mitigation: str | dict[str, Any] | None = Field(
        None, description='"none" | "readout" | "zne" | "readout+zne", or {"method", "calibration_shots", '
        '"scale_factors" (odd, default [1, 3, 5]), "extrapolation" (linear | richardson | exponential)}; '
        'default: readout on noisy simulators and QPUs, none on ideal ones')
    idempotency_key: str | None = Field(None, min_length=1, max_length=200,
                                        description="Repeat a submission safely: same key → same job")


class EstimateRequest(BaseModel):
    """A submission without its inputs (their count is enough), to quote before running."""

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(),
        json_schema_extra={"examples": [{"model_id": "6f1c2d3e-0000-4000-8000-000000000000", "samples": 64,
                                         "backend": "braket:arn:aws:braket:eu-north-1::device/qpu/iqm/Garnet",
                                         "shots": 1000, "pack": 20}]},
    )

    model_id: str = Field(min_length=1, max_length=64)
    samples: int = Field(ge=1, description="Rows the inputs would have")
    backend: str = Field("exact", min_length=1, max_length=200, description="See GET /v1/backends")
    shots: int | None = JobRequest.model_fields["shots"]
    pack: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] | None = JobRequest.model_fields["pack"]
    options: dict[str, Any] = Field(default_factory=dict, description="Backend options")
    mitigation: str | dict[str, Any] | None = JobRequest.model_fields["mitigation"]


class RoundOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    number: int
    rows: int = Field(description="Circuits after deduplication")
    requested: int = Field(description="Activations (sample × edge) those circuits serve")
    executions: int
    shots: int
    provider_job_ids: list[str]
    submitted_at: datetime
    finished_at: datetime | None
    seconds: float | None


class JobError(BaseModel):
    code: str
    message: str


class EstimateOut(BaseModel):
    tasks: int = Field(description="Provider jobs / quantum tasks, at most")
    executions: int = Field(description="Circuit executions, at most")
    shots: int
    qpu_seconds: float
    cost: float = Field(description="USD at the list price in backends/pricing.py")
    peak_bytes: int = Field(0, description="Worker memory its largest round needs, about (0: estimated before "
                                           "this field existed)")


class QuoteOut(BaseModel):
    """What ``POST /v1/jobs`` would run and cost, decided as it would decide; nothing is stored."""

    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    backend: str
    samples: int
    rounds: int
    circuits: int = Field(description="Edge circuits of all rounds, before deduplication")
    shots: int | None
    width: int = Field(description="Template copies per circuit (pack)")
    mitigation: dict[str, Any]
    estimate: EstimateOut = Field(description="Upper bound, as stored on the job and checked against budgets")
    price: dict[str, Any] = Field(description="USD per task, shot and QPU second; source")
    configured: bool = Field(description="False: hardware whose account is not set up, quoted from the price "
                                         "table and the device's published limits")
    assumptions: list[str] = Field(description="What the quote assumed where the provider would decide")
    within_budget: bool
    budget_message: str | None = Field(None, description="The refusal a submission would get (HTTP 402)")


class JobOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    kind: Literal["inference", "train"]
    model_id: str | None
    backend: str
    queue: str
    state: JobState
    rounds_done: int
    rounds_total: int
    samples: int
    shots: int | None
    pack: int | Literal["auto"] | None
    options: dict[str, Any]
    estimate: EstimateOut | None = Field(None, description="Upper bound computed before submission")
    placement: dict[str, Any] | None = Field(None, description="Qubits of the latest round and their calibration")
    mitigation: dict[str, Any] | None = Field(None, description="The error mitigation the job runs with")
    qpu_seconds: float = 0.0
    cost: float = Field(0.0, description="USD at list price of what ran")
    shots_used: int = Field(description="Σ circuit executions × shots")
    executions: int = Field(description="Circuit executions so far")
    provider_job_ids: list[str]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queued_seconds: float | None
    run_seconds: float | None
    error: JobError | None
    rounds: list[RoundOut]


class JobPage(Page):
    items: list[JobOut]


class JobResultOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    job_id: str
    outputs: list[list[float]] | None = None
    stderr: list[list[float]] | None = Field(None, description="Standard errors (delta method from shot noise)")
    raw_outputs: list[list[float]] | None = Field(
        None, description="Mitigated jobs: the outputs the same rounds give without mitigation")
    raw_stderr: list[list[float]] | None = None
    layers: list[list[list[float]]] | None = Field(None, description="Each QKAN layer's output, if asked for")
    activations: list[list[list[list[float]]]] | None = Field(
        None, description="Per QKAN layer, samples × out × in edge activations, if asked for (and kept)")
    model_id: str | None = Field(None, description="Training jobs: the model they produced")
    losses: list[float] | None = None


class BackendOut(BaseModel):
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
    pending_jobs: int = Field(0, description="This service's jobs waiting on the provider")
    provider_queue: int = Field(0, description="Jobs in the provider's own queue")
    calibration_time: str | None = None
    calibration_age_hours: float | None = None
    price: dict[str, Any] = Field(default_factory=dict, description="USD per task, shot and QPU second; source")
    configured: bool = Field(True, description="False: hardware whose account is not set up; see enable_with")
    enable_with: str | None = Field(None, description="The setting that would make this hardware usable")


class QueueOut(BaseModel):
    name: str
    depth: int = Field(description="Messages waiting in the broker")


class WorkerOut(BaseModel):
    name: str
    queues: list[str]
    active: int
    reserved: int
    concurrency: int | None = Field(None, description="Task processes of the worker's pool")


class QueuesOut(BaseModel):
    queues: list[QueueOut]
    workers: list[WorkerOut]
    jobs_by_state: dict[str, int]
    finished_last_minute: int


class ComparisonRequest(BaseModel):
    """Backends to run on the same inputs and compare with a reference (``exact`` by default)."""

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(),
        json_schema_extra={"examples": [{"model_id": "6f1c2d3e-0000-4000-8000-000000000000",
                                         "inputs": [[0.1, -0.5], [0.7, 0.2]],
                                         "backends": ["aer", "aer:fake_melbourne", "braket:local_dm"],
                                         "shots": 4000, "mitigation": "readout+zne"}]},
    )

    model_id: str = Field(min_length=1, max_length=64)
    inputs: Inputs
    backends: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        description="1 to 16 distinct backends, none of them the reference")
    reference: str = Field("exact", min_length=1, max_length=200,
                           description="A backend giving exact probabilities the backends are compared with: "
                                       "exact (the ideal model), or emulate:<device> run without shots (what the "
                                       "device's calibration predicts)")
    shots: int | None = JobRequest.model_fields["shots"]
    pack: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] | None = JobRequest.model_fields["pack"]
    options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description='Options per backend, e.g. {"aer": {"seed": 1}}')
    mitigation: str | dict[str, Any] | None = Field(
        None, description="For every compared backend (the reference runs unmitigated): "
        + (JobRequest.model_fields["mitigation"].description or ""))
    mitigation_per_backend: dict[str, str | dict[str, Any]] = Field(
        default_factory=dict, description='Overrides mitigation for the backends named, e.g. {"aer:fake_melbourne": '
        '"readout+zne"} beside an ideal "aer" left at its default (not the reference: it is exact)')


class AgreementOut(BaseModel):
    """comparisons.agreement: outputs ± σ against the reference's."""

    n: int = Field(description="Output values compared (samples × outputs)")
    rmse: float
    max_error: float
    sigma: float = Field(description="The RMSE the reported standard errors explain")
    mean_z2: float | None = Field(description="Mean squared error in units of the reported σ (null: infinite)")
    p_value: float = Field(description="χ² probability of differences this large if the errors explain them, "
                                       "over the samples that share no circuit (chi2_n values)")
    chi2_n: int = Field(description="Output values p_value counts: those of samples that share no circuit (for a "
                                    "QKAN, no input value in common), as shared circuits share their shot noise")
    slope: float | None = Field(description="Of outputs on the reference: below 1 is a noise shrink (null: the "
                                            "reference is constant)")
    intercept: float | None


class EdgeErrorOut(BaseModel):
    output: int = Field(description="The edge's output node in its layer")
    input: int = Field(description="The edge's input node in its layer")
    rmse: float = Field(description="Of its activation vs the reference's, over the samples")
    qubit: int | None = Field(None, description="The physical qubit most of its samples ran on, where the backend "
                              "placed its circuits (packed W wide, an edge's samples spread over W qubits)")
    qubit_share: float | None = Field(None, description="The share of its samples that ran on that qubit")


class LayerAgreementOut(BaseModel):
    layer: int = Field(description="QKAN layer (round), from 0")
    output_rmse: float
    activation_rmse: float | None = Field(description="Over every edge and sample (null: not kept for this job)")
    worst_edges: list[EdgeErrorOut] = Field(description="The five edges whose activations differ most")


class ComparedOut(BaseModel):
    """One backend's job in a comparison, and how it agrees with the reference once both succeeded."""

    backend: str
    job: JobOut
    agreement: AgreementOut | None = None
    raw_agreement: AgreementOut | None = Field(None, description="The same before mitigation, where it ran")
    layers: list[LayerAgreementOut] | None = Field(
        None, description="Per QKAN layer: output and edge-activation RMSE vs the reference's, the worst edges "
        "(activations are kept with each job's result: 8 bytes per edge and sample)")


class ComparisonOut(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    id: str
    model_id: str | None
    reference: ComparedOut
    backends: list[ComparedOut]
    finished: bool = Field(description="Every job has ended")
    estimate: EstimateOut = Field(description="The jobs' estimates summed")
    created_at: datetime


class ComparisonPage(Page):
    items: list[ComparisonOut]

