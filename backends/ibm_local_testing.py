"""``ibm:fake_<name>``: Qiskit Runtime's local testing mode, its simulator and its spool of counts.

The fake device's own noise model on Aer, offline. Such a job runs in a
thread of the process that submitted it; its counts land in a spool folder so
that any worker process can poll it, and a job whose process died is reported
lost (the round is run again — nothing was billed). Local testing picks Aer's
method (density matrix up to 8 copies, matrix product state above, since
packed copies never entangle) and the fake device's noise model restricted to
the qubits in use, both set on the AerSimulator the local job runs on (the
executor's simulator options have no noise model).
"""

import os
import tempfile
import threading
import time
import warnings
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from qiskit.providers import BackendV2
from qiskit_aer import AerSimulator
from qiskit_aer.noise import NoiseModel
from qiskit_aer.noise.device.models import basic_device_gate_errors, basic_device_readout_errors

from qkan_orch.backends.base import ProviderJobFailed, ProviderJobLost
from qkan_orch.backends.ibm_jobs import job_ones
from qkan_orch.backends.qiskit_common import fake_backend, fake_backend_classes

SPOOL = Path(tempfile.gettempdir()) / f"qkan-local-runtime-{os.getuid()}"
SPOOL_KEEP_SECONDS = 86_400


@cache
def fake_device(device: str, method: str) -> BackendV2:
    """A fake device per Aer method, so concurrent local jobs never share mutable options."""
    backend = fake_backend_classes()[device]()
    backend.set_options(method=method, max_parallel_experiments=0)
    return backend


@lru_cache(maxsize=16)
def local_simulator(device: str, method: str, qubits: tuple[int, ...]) -> AerSimulator:
    """The AerSimulator a local job runs on: the fake device with Aer's ``method`` and its noise on ``qubits``.

    Local testing copies it per job (``run_quantum_program``), so concurrent jobs never share options.
    """
    return AerSimulator.from_backend(fake_device(device, method), method=method, max_parallel_experiments=0,
                                     noise_model=used_qubit_noise(device, qubits))


@cache
def _device_errors(device: str) -> tuple[list, list, list[str]]:
    """Read-out and gate errors of every qubit, built as the fake device builds its own noise model."""
    fake = fake_backend(device)
    props = fake.properties()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gates = list(basic_device_gate_errors(props))
    return list(basic_device_readout_errors(props)), gates, list(fake.configuration().basis_gates)


@lru_cache(maxsize=64)
def used_qubit_noise(device: str, qubits: tuple[int, ...]) -> NoiseModel:
    """The fake device's noise model restricted to ``qubits`` (its delay relaxation aside: no delays here).

    Packed copies never interact, so errors of other qubits cannot reach the counts; Aer's
    per-run cost of the full 127–156-qubit model (seconds) buys nothing here.
    """
    readout, gates, basis = _device_errors(device)
    used = set(qubits)
    model = NoiseModel(basis_gates=basis)
    for on, error in readout:
        if set(on) <= used:
            model.add_readout_error(error, on)
    for name, on, error in gates:
        if set(on) <= used:
            model.add_quantum_error(error, name, on)
    return model


# -- local testing mode: jobs held by this process, counts spooled for every process ---------------

LOCAL_JOBS: dict[str, Any] = {}
_swept = 0.0  # when this process last removed old spool files


def spool_when_done(job: Any, width: int) -> None:
    SPOOL.mkdir(parents=True, exist_ok=True)
    global _swept
    if time.time() - _swept > SPOOL_KEEP_SECONDS / 24:  # now and then: results of jobs long since polled
        _swept = time.time()
        for old in SPOOL.iterdir():
            if old.stat().st_mtime < _swept - SPOOL_KEEP_SECONDS:
                old.unlink(missing_ok=True)
    job_id = job.job_id()
    LOCAL_JOBS[job_id] = job

    def wait() -> None:
        try:
            ones = job_ones(job.result(), width)
            tmp = SPOOL / f"{job_id}.tmp.npy"
            np.save(tmp, ones)
            os.replace(tmp, SPOOL / f"{job_id}.npy")
        except Exception as exc:
            (SPOOL / f"{job_id}.err").write_text(f"{type(exc).__name__}: {exc}", encoding="utf-8")
        finally:
            LOCAL_JOBS.pop(job_id, None)

    threading.Thread(target=wait, name=f"local-runtime-{job_id[:8]}", daemon=True).start()


def spooled(job_id: str, pid: int) -> tuple[np.ndarray, float] | None:
    done, failed = SPOOL / f"{job_id}.npy", SPOOL / f"{job_id}.err"
    if done.exists():
        return np.load(done), 0.0
    if failed.exists():
        raise ProviderJobFailed(f"local testing job {job_id} failed: {failed.read_text(encoding='utf-8')}")
    if job_id in LOCAL_JOBS or _alive(pid):
        return None
    raise ProviderJobLost(f"local testing job {job_id} was lost with its process {pid}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
