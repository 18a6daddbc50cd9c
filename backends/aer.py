"""``aer`` and ``aer:fake_<device>``: Qiskit Aer through its SamplerV2 primitive.

One PUB per batch: the packed template, bound to the whole (M, W·P) matrix.
With a fake device, the template is transpiled to the ISA of the W
best-read-out qubits and run with their noise model on Aer's density-matrix
method — exact noisy probabilities, then all shots sampled at once, instead of
one noisy trajectory per shot.
"""

from functools import cache
from typing import Any

import numpy as np
from qiskit.transpiler import Target
from qiskit_aer.noise import NoiseModel
from qiskit_aer.primitives import SamplerV2

from qkan_orch.backends.base import Capabilities
from qkan_orch.backends.qiskit_common import (
    best_qubits,
    check_fake_name,
    compact_target,
    fake_backend,
    fake_qubits,
    isa_template,
    noise_model,
    ones_per_clbit,
    pubs_for,
)
from qkan_orch.backends.sampling import LocalSamplingBackend
from qkan_orch.circuits.batch import Template

MAX_SHOTS = 10_000_000
# Our circuits have ≤ 8 (noisy) or ≤ 24 qubits: parallelise over the bound parameter
# sets, not inside one tiny state. Aer's default (all threads on one experiment) ran
# 1.5× slower here, and 3× slower when another process shared the cores.
AER_THREADS: dict[str, Any] = {"max_parallel_experiments": 0}


@cache
def _device_slice(device: str, width: int) -> tuple[tuple[int, ...], Target, NoiseModel]:
    target = fake_backend(device).target
    qubits = best_qubits(target, width)
    compact = compact_target(target, qubits)
    return qubits, compact, noise_model(compact)


class AerBackend(LocalSamplingBackend):
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

    def count_zeros(
        self,
        template: Template,
        packed: np.ndarray,
        width: int,
        shots: int,
        options: dict[str, Any],
        metadata: dict[str, Any],
    ) -> np.ndarray:
        backend_options: dict[str, Any] = {"method": "statevector", **AER_THREADS}
        if self.device is None:
            circuit = isa_template(template, width, None)
        else:
            qubits, target, model = _device_slice(self.device, width)
            circuit = isa_template(template, width, target, key=(self.device, qubits))
            metadata["physical_qubits"] = list(qubits)
            if options.get("noise", True):
                backend_options = {"method": "density_matrix", "noise_model": model, **AER_THREADS}
        metadata["noise"] = "noise_model" in backend_options
        sampler = SamplerV2(seed=options.get("seed"), options={"backend_options": backend_options})
        results = sampler.run(pubs_for(circuit, packed), shots=shots).result()
        return shots - np.concatenate([ones_per_clbit(pub.data.meas.array, width) for pub in results])
