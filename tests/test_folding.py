"""Unitary folding for zero-noise extrapolation, on the circuits each SDK actually runs.

Acceptance (issue 10): at scale factors 3 and 5 the executed circuits hold exactly 3× and 5× the
single-qubit gates of scale 1 — Qiskit's ISA circuit, the OpenQASM program braket:local_dm runs (and its
noise), PennyLane's device tape — while the unitary, hence p0, stays that of scale 1. Read-out calibration
circuits prepare |0⟩/|1⟩ unfolded, and a submission of several parts returns their rows in order.
"""

import math
import re
import warnings
from collections import Counter

import numpy as np
import pennylane as qml
import pytest
from qiskit.quantum_info import Statevector

from qkan_orch.backends import get_backend
from qkan_orch.backends.exact import exact_p0
from qkan_orch.backends.qiskit_common import fake_backend, isa_template
from qkan_orch.circuits import ActivationBatch, Template
from qkan_orch.circuits.folding import MAX_FOLD, Step, folded_steps
from qkan_orch.circuits.lower_pennylane import pennylane_qnode
from qkan_orch.circuits.lower_qiskit import qiskit_template
from qkan_orch.circuits.packing import pack_params, unpack_counts

ANSATZE = ["pz_encoding", "rpz_encoding", "real"]
FOLDS = (1, 3, 5)
WIDTH = 2
REPS = 3
NOT_GATES = ("measure", "barrier")
# A ZNE round fences every scale, scale 1 included (``Template.fenced``): unfenced, Qiskit merges neighbouring
# gates of rpz/real (rz·rz → rz, X·RY·Z → fewer √X) and scale 3 would run more than three times its gates.
QISKIT_ANSATZE = ANSATZE


def random_params(template: Template, rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-math.pi, math.pi, size=(rows, template.num_params))


def isa_gate_count(template: Template, target_name: str) -> int:
    """Single-qubit gate operations of the transpiled circuit Aer / IBM execute (measure, barrier excluded)."""
    if target_name == "compact":  # what aer:fake_sherbrooke runs: the W best qubits, renumbered
        from qkan_orch.backends.aer import _device_slice

        qubits, target, _ = _device_slice("fake_sherbrooke", WIDTH)
        circuit = isa_template(template, WIDTH, target, key=("test_folding", qubits))
    else:
        circuit = isa_template(template, WIDTH, fake_backend("fake_sherbrooke").target, key=("test_folding",),
                               layout=(5, 17))
    assert all(len(i.qubits) == 1 for i in circuit.data if i.operation.name not in NOT_GATES)
    return sum(i.operation.name not in NOT_GATES for i in circuit.data)


@pytest.mark.parametrize("target_name", ["full", "compact"])
@pytest.mark.parametrize("ansatz", QISKIT_ANSATZE)
def test_qiskit_isa_circuit_holds_fold_times_the_gates(ansatz: str, target_name: str) -> None:
    counts = [isa_gate_count(Template(ansatz, REPS, fold, fenced=True), target_name) for fold in FOLDS]
    assert counts[0] > 0 and counts == [fold * counts[0] for fold in FOLDS], counts


def qasm_lines(source: str) -> Counter:
    """Gate lines by name, and depolarizing / bit-flip pragmas, of an OpenQASM program."""
    found: Counter = Counter()
    for line in source.splitlines():
        if match := re.match(r"(h|x|z|rz|ry|i|barrier)\b", line):
            found[match.group(1)] += 1
        elif match := re.match(r"#pragma braket noise (depolarizing|bit_flip)\(", line):
            found[match.group(1)] += 1
    return found


GATE_NAMES = ("h", "x", "z", "rz", "ry")


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_braket_programs_hold_fold_times_the_gates_and_the_noise(ansatz: str) -> None:
    from braket.circuits.serialization import IRType

    from qkan_orch.backends.braket_local import _program
    from qkan_orch.circuits.lower_braket import braket_template

    noisy = [qasm_lines(_program(Template(ansatz, REPS, f), WIDTH, 0.003, 0.02).source) for f in FOLDS]
    plain = [qasm_lines(braket_template(Template(ansatz, REPS, f), WIDTH).to_ir(IRType.OPENQASM).source)
             for f in FOLDS]
    for lines in (noisy, plain):
        gates = [sum(c[g] for g in GATE_NAMES) for c in lines]
        assert gates[0] > 0 and gates == [f * gates[0] for f in FOLDS], gates
        assert [c["barrier"] for c in lines] == [0] + [f * gates[0] for f in FOLDS[1:]]  # a fence per gate
    # noise follows the gates (one channel each), not the fences; read-out flips once per qubit
    assert [c["depolarizing"] for c in noisy] == [sum(c[g] for g in GATE_NAMES) for c in noisy]
    assert [c["bit_flip"] for c in noisy] == [WIDTH] * len(FOLDS)
    assert not any(c["depolarizing"] or c["bit_flip"] for c in plain)


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_pennylane_tapes_hold_fold_times_the_gates(ansatz: str) -> None:
    counts = {}
    for fold in FOLDS:
        template = Template(ansatz, REPS, fold)
        qnode = pennylane_qnode(qml.device("default.qubit", wires=WIDTH), template, WIDTH, None)
        angles = pack_params(random_params(template, 2 * WIDTH), WIDTH).T
        for level in ("user", "device"):  # as written, and as the device executes it
            tape = qml.workflow.construct_tape(qnode, level=level)(angles)
            counts[level, fold] = sum(op.name != "Barrier" for op in tape.operations)
    for level in ("user", "device"):
        assert counts[level, 1] > 0
        assert [counts[level, f] for f in FOLDS] == [f * counts[level, 1] for f in FOLDS], counts


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_folding_keeps_the_unitary(ansatz: str) -> None:
    """p0 of the folded circuit equals p0 at scale 1 (and the torch simulator's) to 1e-12, on every copy."""
    base = Template(ansatz, REPS)
    params = random_params(base, 6, seed=1)
    packed = pack_params(params, WIDTH)
    want = exact_p0(ActivationBatch(base, params, (), "z"))
    for fold in (*FOLDS, MAX_FOLD):
        template = Template(ansatz, REPS, fold)
        probs = pennylane_qnode(qml.device("default.qubit", wires=WIDTH), template, WIDTH, None)(packed.T)
        pl = unpack_counts(np.stack([np.atleast_2d(p)[:, 0] for p in probs], axis=1), len(params))
        circuit = qiskit_template(template, WIDTH).remove_final_measurements(inplace=False)
        sv = [[Statevector(circuit.assign_parameters(row)).probabilities([q])[0] for q in range(WIDTH)]
              for row in packed]
        qk = unpack_counts(np.array(sv), len(params))
        assert np.max(np.abs(pl - want)) < 1e-12 and np.max(np.abs(qk - want)) < 1e-12, fold


def test_folded_steps_alternate_gate_and_inverse() -> None:
    steps = folded_steps("rpz_encoding", 1, 3)  # H, RY(c0), RZ(c1), RY(c2), each G G† G, fenced
    assert steps[:3] == (Step("h", None, 1, True),) * 3
    assert [(s.name, s.column, s.sign) for s in steps[3:6]] == [("ry", 0, 1), ("ry", 0, -1), ("ry", 0, 1)]
    assert all(s.fence for s in steps) and not any(s.fence for s in folded_steps("rpz_encoding", 1, 1))


@pytest.mark.parametrize("fold", [0, -1, 2, 4, MAX_FOLD + 1, MAX_FOLD + 2])
def test_bad_folds_are_refused(fold: int) -> None:
    with pytest.raises(ValueError, match="odd integer"):
        folded_steps("pz_encoding", 2, fold)


@pytest.mark.parametrize("bit", [0, 1])
def test_calibration_templates_prepare_their_bit_unfolded(bit: int) -> None:
    template = Template.preparation(bit)
    assert template.num_params == 0 and template.fold == 1
    assert template.steps == (Step("x" if bit else "id"),)
    assert Template(template.ansatz, 0, fold=5).steps == template.steps  # a fold never applies to them
    probs = pennylane_qnode(qml.device("default.qubit", wires=WIDTH), template, WIDTH, None)(np.zeros((0, 1)))
    assert [float(np.atleast_2d(p)[0, 0]) for p in probs] == [1.0 - bit] * WIDTH
    circuit = qiskit_template(template, WIDTH).remove_final_measurements(inplace=False)
    assert Statevector(circuit).probabilities([0])[0] == Statevector(circuit).probabilities([1])[0] == 1.0 - bit
    from qkan_orch.backends.braket_local import _program

    with warnings.catch_warnings():  # Braket warns that |0⟩'s identity gets no gate noise: that is the point
        warnings.simplefilter("ignore", UserWarning)
        lines = qasm_lines(_program(template, WIDTH, 0.003, 0.02).source)
    assert lines == Counter({"x" if bit else "i": WIDTH, "depolarizing": WIDTH * bit, "bit_flip": WIDTH}) - Counter()


# Parts: one job of (data rows, k·W |0⟩ rows, k·W |1⟩ rows). At k = 2 a parameter-free part has several
# circuits, which Aer's SamplerV2 (one PUB each) and PennyLane's QNode (k·shots shots, split) run apart.
PARTS_BACKENDS = [
    pytest.param("aer", {"seed": 5}, 1, id="aer-k1"),
    pytest.param("aer", {"seed": 5}, 2, id="aer-k2"),
    pytest.param("braket:local", {}, 1, id="braket-k1"),
    pytest.param("braket:local", {}, 2, id="braket-k2"),
    pytest.param("pennylane:default.qubit", {"seed": 5}, 1, id="pennylane-k1"),
    pytest.param("pennylane:default.qubit", {"seed": 5}, 2, id="pennylane-k2"),
]
PARTS_SHOTS = 400


@pytest.mark.parametrize(("name", "options", "repeats"), PARTS_BACKENDS)
def test_parts_come_back_in_order(name: str, options: dict, repeats: int) -> None:
    """Data rows within 5σ + 1/n of exact (σ from the exact p0 and n shots, as in test_backends), then the
    calibration rows exactly 1 and exactly 0 (an ideal simulator flips no bit)."""
    width, rows = 3, 7
    data = ActivationBatch(Template("pz_encoding", 2), random_params(Template("pz_encoding", 2), rows, 2), (), "z")
    calibration = [ActivationBatch(Template.preparation(bit), np.zeros((repeats * width, 0)), (), "z")
                   for bit in (0, 1)]
    result = get_backend(name).submit((data, *calibration), shots=PARTS_SHOTS, pack=width, options=options).result
    p = exact_p0(data)
    assert result.p0.shape == (rows + 2 * repeats * width,)
    sigma = np.sqrt(p * (1 - p) / PARTS_SHOTS)
    assert np.all(np.abs(result.p0[:rows] - p) <= 5 * sigma + 1 / PARTS_SHOTS), "data rows outside 5σ"
    assert result.p0[rows:].tolist() == [1.0] * repeats * width + [0.0] * repeats * width
    assert result.executions == math.ceil(rows / width) + 2 * repeats
