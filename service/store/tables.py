"""The database schema. The database is the truth about models, jobs and results.

Binary columns hold safetensors bytes (models, inputs, plan states, results):
no pickle anywhere. ``rounds`` has one row per (job, round) and a unique key on
it, which is what makes a round's submission happen at most once.
"""

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp written in UTC and read back aware: SQLite keeps no zone (PostgreSQL's timestamptz does), and
    naive and aware datetimes neither compare nor serialise alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict: JSON, list: JSON}  # noqa: RUF012


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    max_shots: Mapped[int | None] = mapped_column(BigInteger)  # budget: shots over all the key's jobs
    max_cost: Mapped[float | None] = mapped_column(Float)  # budget: estimated USD over all its jobs
    admin: Mapped[bool] = mapped_column(Boolean, default=False)  # the dashboard shows it every key's jobs
    rate_limit: Mapped[float | None] = mapped_column(Float)  # requests per second; None: the service's setting
    max_active_jobs: Mapped[int | None]  # queued or running at once; None: the setting
    revoked_at: Mapped[datetime | None]  # set: every request with the key is refused (401)
    # what its pruned jobs had counted against the budgets: retention deletes jobs, not what they spent
    pruned_shots: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    pruned_cost: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class WebSession(Base):
    """A dashboard sign-in: the browser holds a random token (an httpOnly cookie), never the API key; only the
    token's hash is stored. ``csrf`` is the token every state-changing form sends back."""

    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class StoredModel(Base):
    __tablename__ = "models"
    __table_args__ = (Index("ix_models_owner_digest", "owner_id", "digest", unique=True),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict]
    parameter_count: Mapped[int]
    content_hash: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str | None] = mapped_column(String(64))  # uploads: spec + weights, one model per key (store.models)
    blob: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)  # loaded only when read
    source: Mapped[str] = mapped_column(String(20))
    noise: Mapped[dict | None]  # noise-aware training: the device (and qubits) the parameters compensate; else None
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CalibrationSnapshot(Base):
    """A device's calibration as jobs ran under it: stored once per (backend, calibration time), a versioned
    JSON document (per-qubit T1, T2, gate errors and durations, read-out) from which the emulator rebuilds
    that device's noise, so a hardware run can be reproduced offline. Device data, not a key's: not owned."""

    __tablename__ = "calibrations"
    __table_args__ = (UniqueConstraint("backend", "calibrated_at", name="uq_calibrations_backend_time"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    backend: Mapped[str] = mapped_column(String(200))
    calibrated_at: Mapped[datetime]
    version: Mapped[int]
    document: Mapped[dict]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Comparison(Base):
    """Backends run on the same inputs against a reference: one inference job each (``Job.comparison_id``)."""

    __tablename__ = "comparisons"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"), index=True)
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    reference: Mapped[str] = mapped_column(String(200))  # the reference's backend: its job is one of the jobs
    backends: Mapped[list]  # compared backends, in the order asked for
    settings: Mapped[dict]  # shots, pack, options, mitigation as asked (each job stores what it resolved to)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class Job(Base):
    __tablename__ = "jobs"
    # (owner_id, state): a submission counts its key's active jobs under the key's row lock; with an index on
    # state alone that scanned every active job of every key (0.1 vs 3.8 ms beside 20 000 others' active jobs)
    __table_args__ = (UniqueConstraint("owner_id", "idempotency_key"),
                      Index("ix_jobs_owner_state", "owner_id", "state"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    kind: Mapped[str] = mapped_column(String(20))  # inference | train
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    backend: Mapped[str] = mapped_column(String(200))
    queue: Mapped[str] = mapped_column(String(20))
    shots: Mapped[int | None]
    pack: Mapped[int | None]
    pack_auto: Mapped[bool] = mapped_column(Boolean, default=False)  # width chosen from calibration per round
    options: Mapped[dict] = mapped_column(default=dict)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(30), index=True)
    rounds_done: Mapped[int] = mapped_column(default=0)
    rounds_total: Mapped[int] = mapped_column(default=0)
    samples: Mapped[int] = mapped_column(default=0)
    inputs: Mapped[bytes] = mapped_column(LargeBinary)
    plan_state: Mapped[bytes | None] = mapped_column(LargeBinary)
    in_flight: Mapped[dict | None]  # the submitted, not yet absorbed round: backend handle
    shots_used: Mapped[int] = mapped_column(default=0)
    executions: Mapped[int] = mapped_column(default=0)
    estimate: Mapped[dict | None]  # upper bound at submission: tasks, executions, shots, qpu_seconds, cost
    placement: Mapped[dict | None]  # qubits of the latest round, their calibration and its time
    mitigation: Mapped[dict | None]  # Mitigation.to_json() of what the job runs with (None: a training job)
    comparison_id: Mapped[str | None] = mapped_column(ForeignKey("comparisons.id", ondelete="SET NULL"), index=True)
    qpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)  # USD at list price of what ran
    attempts: Mapped[int] = mapped_column(default=0)
    error_code: Mapped[str | None] = mapped_column(String(50))
    error_message: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[float | None] = mapped_column(Float)  # epoch seconds: portable comparisons
    task_id: Mapped[str | None] = mapped_column(String(64))  # the latest Celery message for the job
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None] = mapped_column(index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def requested_pack(self) -> int | str | None:
        """What the submission asked for: a width, "auto", or None for the backend's default."""
        return "auto" if self.pack_auto else self.pack


class Round(Base):
    """One quantum round of a job: claimed once, submitted once, absorbed once."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("job_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]
    rows: Mapped[int] = mapped_column(default=0)  # circuits after deduplication
    requested: Mapped[int] = mapped_column(default=0)  # activations they serve
    executions: Mapped[int] = mapped_column(default=0)
    shots: Mapped[int] = mapped_column(default=0)
    provider_job_ids: Mapped[list] = mapped_column(default=list)
    submitted_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    seconds: Mapped[float | None] = mapped_column(Float)


class JobEvent(Base):
    """Progress of a job, in order: what the events stream sends."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(30))
    data: Mapped[dict] = mapped_column(default=dict)


class JobResult(Base):
    __tablename__ = "results"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    arrays: Mapped[bytes] = mapped_column(LargeBinary)  # safetensors: outputs, stderr, layer.<k>
    summary: Mapped[dict] = mapped_column(default=dict)
