"""``aer`` and ``aer:fake_<device>``: Qiskit Aer through its SamplerV2 primitive.

One PUB per batch: the packed template, bound to the whole (M, W·P) matrix.
With a fake device, the template is transpiled to the ISA of the W
best-read-out qubits and run with their noise model on Aer's density-matrix
method — exact noisy probabilities, then all shots sampled at once, instead of
one noisy trajectory per shot.
"""

import time
from functools import cache
from typing import Any

import numpy as np
from qiskit.transpiler import Target
from qiskit_aer.noise import NoiseModel
from qiskit_aer.primitives import SamplerV2

from backends.base import Backend, Capabilities, Handle
from backends.qiskit_common import (
    best_qubits,
    check_fake_name,
    compact_target,
    fake_backend,
    fake_qubits,
    isa_template,
    noise_model,
    ones_per_clbit,
)
from circuits.batch import ActivationBatch, BatchResult
from circuits.packing import binomial_p0, pack_params, unpack_counts

MAX_SHOTS = 10_000_000
# Our circuits have ≤ 8 (noisy) or ≤ 24 qubits: parallelise over the bound parameter
# sets, not inside one tiny state. Aer's default (all threads on one experiment) ran
# 2.5× slower here, and 3× slower again when another process shared the cores.
AER_THREADS: dict[str, Any] = {"max_parallel_experiments": 0}


@cache
def _device_slice(device: str, width: int) -> tuple[tuple[int, ...], Target, NoiseModel]:
    target = fake_backend(device).target
    qubits = best_qubits(target, width)
    compact = compact_target(target, qubits)
    return qubits, compact, noise_model(compact)


class AerBackend(Backend):
    def __init__(self, device: str | None = None) -> None:
        self.device = device
        self.name = f"aer:{device}" if device else "aer"
        if device is not None:
            check_fake_name(device)  # unknown names fail here, before any work

    def capabilities(self) -> Capabilities:
        if self.device is None:
            return Capabilities(
                name=self.name, kind="simulator", qubits=24, noise="none (ideal state vector)",
                max_shots=MAX_SHOTS, native_gates=("h", "x", "z", "rz", "ry"),
                default_pack=8, max_pack=24, options=("seed",),
            )
        return Capabilities(
            name=self.name, kind="noisy simulator", qubits=fake_qubits(self.device),
            noise=f"{self.device} calibration: depolarizing + T1/T2 relaxation per gate, read-out error",
            max_shots=MAX_SHOTS, native_gates=("rz", "sx", "x"),
            default_pack=4, max_pack=8, options=("seed", "noise"),
        )

    def submit(
        self,
        batch: ActivationBatch,
        shots: int | None = None,
        pack: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Handle:
        shots, width, options = self.validate(shots, pack, options)
        start = time.perf_counter()
        backend_options: dict[str, Any] = {"method": "statevector", **AER_THREADS}
        metadata: dict[str, Any] = {"pack": width}
        if self.device is None:
            circuit = isa_template(batch.template, width, None)
        else:
            qubits, target, model = _device_slice(self.device, width)
            circuit = isa_template(batch.template, width, target, key=(self.device, qubits))
            metadata["physical_qubits"] = list(qubits)
            if options.get("noise", True):
                backend_options = {"method": "density_matrix", "noise_model": model, **AER_THREADS}
        metadata["noise"] = "noise_model" in backend_options
        packed = pack_params(batch.params, width)
        ones = np.zeros((0, width), dtype=np.int64)
        if batch.num_rows:
            sampler = SamplerV2(seed=options.get("seed"), options={"backend_options": backend_options})
            bits = sampler.run([(circuit, packed)], shots=shots).result()[0].data.meas
            ones = ones_per_clbit(bits.array, width)
        p0, se = binomial_p0(shots - unpack_counts(ones, batch.num_rows), shots)
        metadata["seconds"] = time.perf_counter() - start
        result = BatchResult(
            p0=p0, p0_stderr=se, shots=shots, executions=ones.shape[0], metadata=metadata,
        )
        return Handle(self.name, result=result)
