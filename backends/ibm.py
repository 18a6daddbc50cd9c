"""``ibm:<backend>``: IBM Quantum through Qiskit Runtime's executor-based Sampler in Batch mode.

A batch becomes one PUB — the packed template transpiled once per (device,
width, layout) and its (M, W·P) parameter array — split into several jobs only
where IBM's per-job limits demand (``ibm_jobs``). A submission of several parts (a mitigated
round: every fold scale, the read-out calibration circuits) is one PUB per
part in the same job, on the same qubits. ``submit`` returns job ids at once;
``poll`` asks their status and never waits; ``cancel`` cancels them.

``ibm:fake_<name>`` runs this very code in Qiskit Runtime's local testing
mode (``ibm_local_testing``: the fake device's noise on Aer, offline, counts
spooled for any worker to poll). The Sampler
(``qiskit_ibm_runtime.executor_sampler``) prepares twirling and dynamical
decoupling on the client and runs one ``executor`` program per job, so they
take effect in local testing mode too.
"""

import logging
import math
import os
from typing import Any

import numpy as np
from qiskit.providers import BackendV2
from qiskit_ibm_runtime import Batch
from qiskit_ibm_runtime.executor_sampler import Sampler

from qkan_orch.backends.accounts import redact
from qkan_orch.backends.base import (
    Capabilities,
    Handle,
    Pack,
    Price,
    ProviderJobFailed,
    Status,
    TransientBackendError,
)
from qkan_orch.backends.calibration import CalibratedBackend, Placement, counts_result, part_rows
from qkan_orch.backends.ibm_account import runtime_service
from qkan_orch.backends.ibm_jobs import job_ones, split_pubs
from qkan_orch.backends.ibm_local_testing import LOCAL_JOBS, fake_device, local_simulator, spool_when_done, spooled
from qkan_orch.backends.pricing import ibm_price
from qkan_orch.backends.qiskit_common import (
    check_fake_name,
    fake_qubits,
    isa_template,
    pubs_for,
    qubit_calibration,
)
from qkan_orch.circuits.batch import ActivationBatch, BatchResult, Parts, parts_of
from qkan_orch.circuits.packing import pack_params
from qkan_orch.models.errors import InputError

log = logging.getLogger("qkan.ibm")
EXECUTIONS_PER_JOB = 10_000_000  # IBM: parameter sets × shots in one job
ROWS_PER_JOB = 10_000  # keeps one job's payload to a few MB
JOB_OVERHEAD_SECONDS = 2.0  # per-job QPU time beyond the shots, for estimates
DD_SEQUENCES = ("XX", "XpXm", "XY4")  # Runtime's dynamical-decoupling sequence types
PENDING = {"INITIALIZING", "QUEUED", "VALIDATING", "RUNNING"}
OPTIONS = ("seed", "twirling", "dynamical_decoupling", "max_readout_error", "max_sx_error", "min_t2_us")
ANGLE_DECIMALS = 12  # local testing rounds angles/(π/2) to this many decimals (Runtime's default 5)


class IBMBackend(CalibratedBackend):
    def __init__(self, device: str) -> None:
        if not device:
            raise InputError("backend", "name an IBM device: ibm:<backend> or ibm:fake_<device>")
        self.device = device
        self.name = f"ibm:{device}"
        self.local = device.startswith("fake_")
        self._remote: BackendV2 | None = None  # the account's device, fetched once per instance
        self._props: Any = None  # BackendProperties, or False when the device publishes none
        self._table: list[dict] | None = None
        if self.local:
            check_fake_name(device)

    # -- the device --------------------------------------------------------------------------------

    def _backend(self, width: int = 1) -> BackendV2:
        if self.local:
            return fake_device(self.device, "density_matrix" if width <= 8 else "matrix_product_state")
        if self._remote is not None:
            return self._remote
        try:
            self._remote = runtime_service().backend(self.device)
            return self._remote
        except (InputError, TransientBackendError):
            raise
        except Exception as exc:
            if type(exc).__name__ == "QiskitBackendNotFoundError":
                raise InputError("backend", f"IBM Quantum has no backend '{self.device}' for this account") from None
            raise TransientBackendError(redact(f"IBM Quantum: {type(exc).__name__}: {exc}")) from None

    def capabilities(self) -> Capabilities:
        if self.local:
            qubits, native, max_shots = fake_qubits(self.device), ("rz", "sx", "x", "ecr"), 100_000
            price = Price(source="free (local testing mode)")
        else:
            backend = self._backend()
            qubits, native = backend.num_qubits, tuple(sorted(backend.target.operation_names))
            max_shots = getattr(backend, "max_shots", None) or 100_000
            price = ibm_price()
        return Capabilities(
            name=self.name, kind="noisy simulator" if self.local else "qpu", qubits=qubits,
            noise=f"{self.device} calibration through Qiskit Runtime local testing mode" if self.local
            else "the device's", max_shots=max_shots, native_gates=native, default_pack=1,
            max_pack=qubits, options=OPTIONS, price=price,
        )

    def calibration_time(self) -> str | None:
        """When the device was calibrated; its properties are read once per backend instance (one step)."""
        if self._props is None:
            self._props = self._backend().properties() or False
        return self._props.last_update_date.isoformat() if self._props else None

    def calibration(self) -> list[dict]:
        """The device's per-qubit calibration table, built once per backend instance."""
        if self._table is None:
            self.calibration_time()
            self._table = qubit_calibration(self._backend().target, self._props or None)
        return self._table

    def status(self) -> Status:
        calibrated = self.calibration_time()
        if self.local:
            return Status(online=True, calibration_time=calibrated, message="local testing mode")
        state = self._backend().status()
        return Status(online=bool(state.operational), queue_length=int(state.pending_jobs),
                      calibration_time=calibrated, message=state.status_msg)

    def validate(self, shots: int | None, pack: Pack, options: dict[str, Any] | None
                 ) -> tuple[int | None, int, dict[str, Any]]:
        shots, width, options = super().validate(shots, pack, options)
        if not isinstance(options.get("twirling", False), bool):
            raise InputError("options.twirling", f"must be true or false, got {options['twirling']!r}")
        dd = options.get("dynamical_decoupling", False)
        if not isinstance(dd, bool) and dd not in DD_SEQUENCES:
            raise InputError("options.dynamical_decoupling",
                             f"must be true, false or one of {', '.join(DD_SEQUENCES)}, got {dd!r}")
        if not self.local and not (status := self.status()).online:
            raise InputError("backend", f"{self.name} is offline: {status.message}")
        return shots, width, options

    def tasks_for(self, executions: int, shots: int, pack: Pack, options: dict[str, Any]) -> int:
        return math.ceil(executions / _rows_per_job(shots)) if executions else 0

    def seconds_for(self, executions: int, shots: int, tasks: int) -> float:
        per_shot = 250e-6  # IBM's default repetition delay dominates a short circuit
        return tasks * JOB_OVERHEAD_SECONDS + executions * shots * per_shot

    # -- jobs --------------------------------------------------------------------------------------

    def submit(self, batch: ActivationBatch | Parts, shots: int | None = None, pack: Pack = None,
               options: dict[str, Any] | None = None) -> Handle:
        shots, width, options = self.validate(shots, pack, options)
        assert shots is not None
        parts = [p for p in parts_of(batch) if p.num_rows]
        width = self.round_width(width, pack, parts[0].num_rows if parts else 0)
        backend = self._backend(width)
        # pack="auto": qubits within the thresholds; an explicit width: the best operational ones
        place = self.placement(width, options, calibrated=pack == "auto")
        pubs = [pub for p in parts for pub in pubs_for(
            isa_template(p.template, width, backend.target, key=(self.name,), layout=place.qubits),
            pack_params(p.params, width))]
        jobs_pubs = split_pubs(pubs, _rows_per_job(shots))
        if self.local:  # the fake's noise on the qubits used: Aer skips 133-qubit bookkeeping per run
            method = "density_matrix" if width <= 8 else "matrix_product_state"
            backend = local_simulator(self.device, method, place.qubits)
        try:
            with Batch(backend=backend) as session:
                sampler = Sampler(mode=session)
                sampler.options.default_shots = shots
                _set_native_options(sampler, options, self.local)
                jobs = [sampler.run(job_pubs, shots=shots) for job_pubs in jobs_pubs]
        except (InputError, TransientBackendError):
            raise
        except Exception as exc:
            raise TransientBackendError(redact(f"IBM Quantum refused the job: {type(exc).__name__}: {exc}")) from None
        ids = [job.job_id() for job in jobs]
        if self.local:
            for job in jobs:
                spool_when_done(job, width)
        data = {"rows": [p.num_rows for p in parts], "width": width, "shots": shots,
                "chunks": [sum(len(values) for _, values in job_pubs) for job_pubs in jobs_pubs],
                "placement": place.to_json(), "local_pid": os.getpid() if self.local else None}
        return Handle(self.name, provider_job_ids=ids, data=data)

    def poll(self, handle: Handle) -> BatchResult | None:
        data = handle.data
        width, shots = data["width"], data["shots"]
        ones, seconds = [], 0.0
        for job_id in handle.provider_job_ids:
            found = spooled(job_id, data["local_pid"]) if self.local else self._remote_counts(job_id, width)
            if found is None:
                return None
            ones.append(found[0])
            seconds += found[1]
        price = Price() if self.local else ibm_price()
        return counts_result(
            np.concatenate(ones, axis=0) if ones else np.zeros((0, width), dtype=np.int64),
            part_rows(data["rows"]), shots, Placement.from_json(data["placement"]),
            provider_job_ids=list(handle.provider_job_ids), qpu_seconds=seconds, cost=price.cost(0, 0, seconds),
        )

    def _remote_counts(self, job_id: str, width: int) -> tuple[np.ndarray, float] | None:
        try:
            job = runtime_service().job(job_id)
            status = str(job.status())
        except InputError:
            raise
        except Exception as exc:
            raise TransientBackendError(redact(f"IBM Quantum: {type(exc).__name__}: {exc}")) from None
        if status in PENDING:
            return None
        if status != "DONE":
            raise ProviderJobFailed(redact(f"IBM job {job_id} ended {status}: {job.error_message() or ''}"))
        usage = (job.metrics().get("usage") or {}).get("quantum_seconds") or 0.0
        return job_ones(job.result(), width), float(usage)

    def cancel(self, handle: Handle) -> None:
        for job_id in handle.provider_job_ids:
            if self.local:
                if (job := LOCAL_JOBS.get(job_id)) is not None:
                    job.cancel()  # only a job that has not started yet can stop
                continue
            try:
                runtime_service().job(job_id).cancel()
            except Exception as exc:  # a job that already finished cannot be cancelled; say so and go on
                log.warning("IBM job %s: cancel failed: %s", job_id, redact(str(exc)))


def _rows_per_job(shots: int) -> int:
    """Parameter rows one Runtime job may carry at ``shots`` each."""
    return max(1, min(ROWS_PER_JOB, EXECUTIONS_PER_JOB // max(1, shots)))


def _randomizations(shots: int) -> int:
    """Randomizations of ``shots`` measurement-twirled shots: the largest divisor of ``shots`` up to
    Runtime's own choice (32, fewer so that each takes at least 64 shots); 1 for a prime count."""
    most = min(32, max(1, shots // 64))
    return max(d for d in range(1, most + 1) if shots % d == 0)


def _set_native_options(sampler: Sampler, options: dict[str, Any], local: bool) -> None:
    """Runtime-native error suppression, passed through; the Sampler applies it before submission."""
    if local:  # simulator options: hardware has no seed and never rounds angles
        sampler.options.simulator.seed_simulator = options.get("seed")
        sampler.options.simulator.angle_decimals = ANGLE_DECIMALS
    if options.get("twirling"):
        sampler.options.twirling.enable_gates = False
        sampler.options.twirling.enable_measure = True
        # "auto" rounds the shots up to randomizations × shots each (200 → 4 × 64): fix a split that
        # takes exactly ``shots``, so the counts, the estimate and the bill keep the shots asked for
        shots = sampler.options.default_shots or 1
        sampler.options.twirling.num_randomizations = _randomizations(shots)
        sampler.options.twirling.shots_per_randomization = shots // _randomizations(shots)
    if dd := options.get("dynamical_decoupling"):
        sampler.options.dynamical_decoupling.enable = True
        sampler.options.dynamical_decoupling.sequence_type = dd if isinstance(dd, str) else "XY4"
