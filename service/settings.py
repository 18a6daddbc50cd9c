"""All service settings in one place: environment variables with the ``QKAN_`` prefix.

Every field is documented in the README's settings table; defaults make
``qkan-orch serve`` work on a bare machine (SQLite, embedded Redis). What
the backends read (accounts, packing thresholds, backend plugins) is in
``backends.accounts``: backends never import the service.
"""

from functools import lru_cache
from pathlib import Path

from pydantic import ByteSize, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QKAN_", env_file=None, extra="ignore")

    data_dir: Path = Field(Path("qkan-data"), description="Folder for the SQLite file and the embedded Redis")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<data_dir>/qkan.db")
    redis_url: str | None = Field(None, description="Broker URL; unset → serve starts an embedded Redis")
    api_host: str = Field("127.0.0.1", description="Address the API listens on")
    api_port: int = Field(8000, description="Port the API listens on")
    max_payload_bytes: int = Field(16 * 2**20, description="Largest request body accepted (413 above)")
    max_json_bytes: int = Field(2 * 2**20, description="Largest JSON job body (413 above): parsing JSON holds "
                                "the interpreter, so larger inputs go as .npy/.csv uploads")
    max_samples: int = Field(100_000, description="Most input rows one job may carry")
    max_shots: int = Field(1_000_000, description="Most shots per circuit a job may ask for")
    poll_interval: float = Field(2.0, description="Seconds between polls of a provider job")
    lease_seconds: float = Field(30.0, description="A worker's claim on a job; renewed while it works")
    task_slice_seconds: float = Field(2.0, description="Local rounds one task runs before yielding the worker; "
                                      "also the length of one chunk of a long local round (progress and cancel "
                                      "between chunks)")
    task_max_retries: int = Field(5, description="Retries of a transient error before the job fails")
    retry_backoff_seconds: float = Field(2.0, description="First retry delay; doubles each retry")
    broker_visibility_timeout: int = Field(300, description="Seconds before a dead worker's task is redelivered")
    worker_concurrency: int | None = Field(None, description="Worker processes (default: CPU count)")
    log_level: str = Field("INFO", description="Logging level of API and workers")
    access_log: bool = Field(False, description="The API's line per HTTP request (uvicorn's access log); off, "
                             "each job's creation and cancel are still logged with its id")
    max_streams_per_key: int = Field(20, ge=1, description="Open event streams one API key may hold per API "
                                     "process (429 above)")
    max_layers: int = Field(16, ge=1, description="Most QKAN layers a model spec may have")
    max_layer_width: int = Field(4096, ge=1, description="Most units in any layer of a model spec")
    max_reps: int = Field(100, ge=1, description="Most data re-uploads (reps) a model spec may have")
    max_window: int = Field(1024, ge=1, description="Most time steps a sequence model's window may have: one round "
                            "(one provider job) each")
    rate_limit_per_second: float = Field(20.0, gt=0, description="Requests per second one API key may make (bursts "
                                         "of twice that); 429 with Retry-After above; a key's own limit overrides it")
    max_active_jobs_per_key: int = Field(200, ge=1, description="Jobs one API key may have queued or running at once "
                                         "(429 above); a key's own limit overrides it")
    auth_failures_per_minute: int = Field(30, ge=1, description="Failed authentications one client address may make "
                                          "per minute (429 above)")
    key_cache_seconds: float = Field(30.0, ge=0, description="How long an API process trusts a key it verified "
                                     "without asking the database: a revoked key is refused within this time")
    retention_days: int = Field(0, ge=0, description="Finished jobs older than this many days are deleted with "
                                "their rounds, events and results by the workers' periodic prune; 0: keep them")
    max_model_numbers: int = Field(10_000_000, ge=1, description="Most numbers a model's tensors may hold, read from "
                                   "its spec and file header before anything is loaded")
    max_rows_per_round: int = Field(2_000_000, ge=1, description="Most circuits one round may run: samples × edges "
                                    "of a layer (training: of all layers, per step)")
    max_job_executions: int = Field(10_000_000, ge=1, description="Most circuit executions a job's estimate may reach")
    max_job_shots: int = Field(10_000_000_000, ge=1, description="Most shots in all a job's estimate may reach")
    max_job_memory: ByteSize = Field(ByteSize(2**30), description="Most worker memory a job's largest round (or "
                                     "training step) may need by its estimate; bytes, or e.g. 512MiB")
    max_train_steps: int = Field(10_000, ge=1, description="Most optimiser steps a training job may ask for")
    worker_max_memory: ByteSize = Field(ByteSize(4 * 2**30), description="Memory ceiling of each worker process "
                                        "(RLIMIT_DATA, the SDKs' own ~1.7 GB included): a job reaching it fails "
                                        "with memory_limit; 0: none")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'qkan.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
