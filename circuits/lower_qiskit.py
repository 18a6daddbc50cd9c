"""Lowering to Qiskit: one ParameterVector template per (template, packing width)."""

from functools import cache

from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector

from qkan_orch.circuits.batch import Template


@cache
def qiskit_template(template: Template, width: int = 1) -> QuantumCircuit:
    """W copies of the edge circuit, each on its own qubit, all measured.

    Parameters are one ``ParameterVector`` of length W·P whose order is the
    packed column order, so a packed (M, W·P) matrix binds as is.
    """
    ansatz = template.circuit
    num_params = ansatz.num_params
    theta = ParameterVector("θ", width * num_params)
    qc = QuantumCircuit(width, name=f"daruan_{ansatz.name}_r{ansatz.reps}_w{width}")
    for copy in range(width):
        offset = copy * num_params
        for gate in ansatz.gates:
            if gate.column is None:
                getattr(qc, gate.name)(copy)
            else:
                getattr(qc, gate.name)(theta[offset + gate.column], copy)
    qc.measure_all()
    return qc
