"""``braket:local`` and ``braket:local_dm``: the Braket SDK's local simulators.

The FreeParameter template is serialised to OpenQASM once per (template, W,
noise) and each packed row runs as that program with its ``inputs``. The
local simulators interpret OpenQASM per task, so packing pays on the state
vector (W = 8 by default); density matrices grow as 4^W, so ``local_dm``
packs nothing by default.

Default noise of ``braket:local_dm`` (options ``depolarizing``,
``readout_flip``; ``noise=false`` turns it off): a single-qubit depolarizing
channel with p = 0.003 after every gate and a read-out bit flip with p = 0.02. "Every gate" is every
gate of the edge circuit (folded ones too); the barriers that fence folds and the identity of the |0⟩
calibration circuit are not gates here (Braket's ``apply_gate_noise`` would otherwise treat them as
such, and fold scale 3 would carry six times the noise, not three).
"""

import warnings
from functools import cache
from typing import Any

import numpy as np
from braket.circuits import Gate, Noise
from braket.circuits.serialization import IRType
from braket.devices import LocalSimulator
from braket.ir.openqasm import Program

from qkan_orch.backends.base import Capabilities
from qkan_orch.backends.emulator_noise import DEPOLARIZING, READOUT_FLIP, braket_options
from qkan_orch.backends.sampling import LocalSamplingBackend
from qkan_orch.circuits.batch import Template
from qkan_orch.circuits.lower_braket import braket_inputs, braket_template

NOISY_GATES = [Gate.H, Gate.X, Gate.Z, Gate.Rz, Gate.Ry]  # not barriers (fences of folds), not the identity
MAX_SHOTS = 1_000_000


@cache
def _program(template: Template, width: int, depolarizing: float, readout_flip: float) -> Program:
    circuit = braket_template(template, width).copy()
    if depolarizing and any(isinstance(i.operator, tuple(NOISY_GATES)) for i in circuit.instructions):
        circuit.apply_gate_noise(Noise.Depolarizing(depolarizing), target_gates=NOISY_GATES)
    if readout_flip:
        circuit.apply_readout_noise(Noise.BitFlip(readout_flip))
    return circuit.to_ir(IRType.OPENQASM)


class BraketLocalBackend(LocalSamplingBackend):
    def __init__(self, density_matrix: bool = False) -> None:
        self.density_matrix = density_matrix
        self.name = "braket:local_dm" if density_matrix else "braket:local"

    def capabilities(self) -> Capabilities:
        if self.density_matrix:
            return Capabilities(
                name=self.name, kind="noisy simulator", qubits=13, max_shots=MAX_SHOTS,
                noise=f"depolarizing p={DEPOLARIZING} after every gate, read-out bit flip p={READOUT_FLIP}",
                native_gates=("h", "x", "z", "rz", "ry"), default_pack=1, max_pack=4,
                options=("noise", "depolarizing", "readout_flip"),
            )
        return Capabilities(
            name=self.name, kind="simulator", qubits=25, max_shots=MAX_SHOTS,
            noise="none (ideal state vector)", native_gates=("h", "x", "z", "rz", "ry"),
            default_pack=8, max_pack=16,
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
        depolarizing, readout_flip = self._noise(options)
        metadata.update(depolarizing=depolarizing, readout_flip=readout_flip)
        program = _program(template, width, depolarizing, readout_flip)
        device = LocalSimulator("braket_dm" if self.density_matrix else "braket_sv")
        ones = np.zeros((packed.shape[0], width), dtype=np.int64)
        with warnings.catch_warnings():  # the dm simulator warns on noise-free circuits
            warnings.simplefilter("ignore", UserWarning)
            for k, inputs in enumerate(braket_inputs(template, width, packed)):
                result = device.run(program, shots=shots, inputs=inputs).result()
                ones[k, result.measured_qubits] = result.measurements.sum(axis=0)
        return shots - ones

    def _noise(self, options: dict[str, Any]) -> tuple[float, float]:
        return braket_options(options) if self.density_matrix else (0.0, 0.0)
