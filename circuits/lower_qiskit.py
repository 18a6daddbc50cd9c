"""Lowering to Qiskit: one ParameterVector template per (template, packing width)."""

from functools import cache

from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector

from qkan_orch.circuits.batch import Template


@cache
def qiskit_template(template: Template, width: int = 1) -> QuantumCircuit:
    """W copies of the edge circuit (folded as ``template.steps`` says), each on its own qubit, all measured.

    Parameters are one ``ParameterVector`` of length W·P whose order is the
    packed column order, so a packed (M, W·P) matrix binds as is. Fences are
    barriers, so transpilation maps each folded gate on its own and cancels none.
    """
    num_params = template.num_params
    theta = ParameterVector("θ", width * num_params)
    qc = QuantumCircuit(width, name=f"daruan_{template.ansatz}_r{template.reps}_f{template.fold}_w{width}")
    for copy in range(width):
        offset = copy * num_params
        for step in template.steps:
            if step.column is None:
                getattr(qc, step.name)(copy)
            else:
                getattr(qc, step.name)(step.sign * theta[offset + step.column], copy)
            if step.fence:
                qc.barrier(copy)
    qc.measure_all()
    return qc
