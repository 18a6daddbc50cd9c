"""Lowering to PennyLane: a broadcast QNode over the packed parameter matrix."""

from collections.abc import Callable

import numpy as np
import pennylane as qml

from qkan_orch.circuits.batch import Template

_GATES = {"h": qml.Hadamard, "x": qml.PauliX, "z": qml.PauliZ, "id": qml.Identity, "rz": qml.RZ, "ry": qml.RY}


def pennylane_qnode(
    device: "qml.devices.Device", template: Template, width: int, shots: int | None
) -> Callable[[np.ndarray], list]:
    """A QNode taking (W·P, M) angles — one broadcast call runs all M circuits.

    It returns, per wire, the (M, 2) outcome probabilities (estimated from
    ``shots`` samples, or exact when ``shots`` is None). The gates are
    ``template.steps`` (folded for zero-noise extrapolation), fences become
    ``qml.Barrier`` so no transform merges a gate with its inverse.
    """
    num_params = template.num_params
    steps = template.steps

    @qml.set_shots(shots)
    @qml.qnode(device, interface=None)
    def circuit(angles: np.ndarray) -> list:
        for copy in range(width):
            for step in steps:
                if step.column is None:
                    _GATES[step.name](wires=copy)
                else:
                    _GATES[step.name](step.sign * angles[copy * num_params + step.column], wires=copy)
                if step.fence:
                    qml.Barrier(wires=copy)
        return [qml.probs(wires=w) for w in range(width)]

    return circuit
