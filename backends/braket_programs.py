"""What a Braket round sends: the template placed on chosen qubits, and program sets of its rows.

With ``pack="auto"`` copy w of the FreeParameter template runs on physical
qubit ``qubits[w]`` (sent with qubit rewiring disabled). Where the device
accepts program sets, consecutive executables of one circuit go as one
CircuitBinding of their inputs, so a whole round can be one task.
"""

from functools import cache
from typing import Any

from braket.circuits import Circuit
from braket.program_sets import CircuitBinding

from qkan_orch.circuits.batch import Template
from qkan_orch.circuits.lower_braket import braket_template


@cache
def placed_template(template: Template, qubits: tuple[int, ...]) -> Circuit:
    """``braket_template`` with copy w moved to physical qubit ``qubits[w]``; parameter names unchanged."""
    return Circuit().add_circuit(braket_template(template, len(qubits)), target_mapping=dict(enumerate(qubits)))


def program_bindings(executables: list[tuple[Circuit, dict[str, float]]]) -> list[Any]:
    """A program set's programs: consecutive executables of one circuit as one CircuitBinding of their
    inputs; a circuit without parameters (read-out calibration) as itself, once per executable."""
    programs: list[Any] = []
    k = 0
    while k < len(executables):
        circuit, inputs = executables[k]
        same = k
        while same < len(executables) and executables[same][0] is circuit:
            same += 1
        if inputs:
            rows = [row for _, row in executables[k:same]]
            programs.append(CircuitBinding(circuit, input_sets={name: [r[name] for r in rows] for name in inputs}))
        else:
            programs += [circuit] * (same - k)
        k = same
    return programs
