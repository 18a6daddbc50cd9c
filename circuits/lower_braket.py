"""Lowering to Amazon Braket: FreeParameter templates and their input dicts."""

from functools import cache

import numpy as np
from braket.circuits import Circuit, FreeParameter

from qkan_orch.circuits.batch import Template


def parameter_names(template: Template, width: int) -> list[str]:
    """Names of the packed columns. Braket reserves ``b`` and ``q``, so we use ``p<copy>_<col>``."""
    return [f"p{copy}_{k}" for copy in range(width) for k in range(template.num_params)]


@cache
def braket_template(template: Template, width: int = 1) -> Circuit:
    """W copies of the edge circuit on qubits 0..W−1 with FreeParameter angles."""
    names = parameter_names(template, width)
    circuit = Circuit()
    ansatz = template.circuit
    for copy in range(width):
        for gate in ansatz.gates:
            if gate.column is None:
                getattr(circuit, gate.name)(copy)
            else:
                angle = FreeParameter(names[copy * ansatz.num_params + gate.column])
                getattr(circuit, gate.name)(copy, angle)
    return circuit


def braket_inputs(template: Template, width: int, packed: np.ndarray) -> list[dict[str, float]]:
    """One ``inputs`` dict per packed circuit row, as ``run_batch`` takes them."""
    names = parameter_names(template, width)
    return [dict(zip(names, row, strict=True)) for row in packed.tolist()]
