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
    """W copies of the edge circuit on qubits 0..W−1 with FreeParameter angles, folded as ``template.steps``
    says; fences are ``barrier`` instructions, so a device's compiler cannot cancel the folds. The identity
    of ``prepare_0`` is Braket's ``i`` (devices without it get ``measure_only`` instead)."""
    names = parameter_names(template, width)
    circuit = Circuit()
    for copy in range(width):
        for step in template.steps:
            gate = getattr(circuit, "i" if step.name == "id" else step.name)
            if step.column is None:
                gate(copy)
            else:
                angle = FreeParameter(names[copy * template.num_params + step.column])
                gate(copy, angle if step.sign > 0 else -angle)
            if step.fence:
                circuit.barrier([copy])
    return circuit


def measure_only(qubits: list[int]) -> Circuit:
    """``prepare_0`` on a device that offers no identity gate: its qubits measured, nothing before."""
    return Circuit().measure(qubits)


def braket_inputs(template: Template, width: int, packed: np.ndarray) -> list[dict[str, float]]:
    """One ``inputs`` dict per packed circuit row, as ``run_batch`` takes them."""
    names = parameter_names(template, width)
    return [dict(zip(names, row, strict=True)) for row in packed.tolist()]
