"""Each lowering computes the same circuit as the torch simulator (exact probabilities)."""

import numpy as np
import pennylane as qml
import pytest
from braket.circuits import Circuit
from braket.devices import LocalSimulator
from qiskit.quantum_info import Statevector

from conftest import make_inputs, make_model
from qkan_orch.backends.exact import exact_p0
from qkan_orch.backends.qiskit_common import ones_per_clbit
from qkan_orch.circuits import compile_layer
from qkan_orch.circuits.lower_braket import braket_inputs, braket_template
from qkan_orch.circuits.lower_pennylane import pennylane_qnode
from qkan_orch.circuits.lower_qiskit import qiskit_template
from qkan_orch.circuits.packing import pack_params, unpack_counts

ANSATZE = ["pz_encoding", "rpz_encoding", "real"]


def small_batch(ansatz: str):
    model = make_model(width=[2, 3], reps=2, ansatz=ansatz, preact_trainable=True)
    return compile_layer(model.layers[0], make_inputs(4, 2))


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_qiskit_template_matches_exact(ansatz: str) -> None:
    batch = small_batch(ansatz)
    circuit = qiskit_template(batch.template, 1).remove_final_measurements(inplace=False)
    assert circuit.num_parameters == batch.template.num_params
    got = [Statevector(circuit.assign_parameters(row)).probabilities()[0] for row in batch.params]
    assert np.allclose(got, exact_p0(batch), atol=1e-12)


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_packed_qiskit_template_matches_exact_on_every_qubit(ansatz: str) -> None:
    batch = small_batch(ansatz)
    width = 3
    packed = pack_params(batch.params, width)
    circuit = qiskit_template(batch.template, width).remove_final_measurements(inplace=False)
    marginals = []
    for row in packed:
        sv = Statevector(circuit.assign_parameters(row))
        marginals.append([sv.probabilities([q])[0] for q in range(width)])
    assert np.allclose(unpack_counts(np.array(marginals), batch.num_rows), exact_p0(batch), atol=1e-12)


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_braket_template_matches_exact(ansatz: str) -> None:
    batch = small_batch(ansatz)
    template = braket_template(batch.template, 2)
    packed = pack_params(batch.params, 2)
    device = LocalSimulator()
    got = []
    for inputs in braket_inputs(batch.template, 2, packed):
        circuit = Circuit().add_circuit(template).probability(target=[0]).probability(target=[1])
        result = device.run(circuit, shots=0, inputs=inputs).result()
        got.append([result.values[0][0], result.values[1][0]])
    assert np.allclose(unpack_counts(np.array(got), batch.num_rows), exact_p0(batch), atol=1e-12)


@pytest.mark.parametrize("ansatz", ANSATZE)
def test_pennylane_broadcast_qnode_matches_exact(ansatz: str) -> None:
    batch = small_batch(ansatz)
    width = 4
    packed = pack_params(batch.params, width)
    probs = pennylane_qnode(qml.device("default.qubit", wires=width), batch.template, width, None)(packed.T)
    p0 = np.stack([np.atleast_2d(p)[:, 0] for p in probs], axis=1)
    assert np.allclose(unpack_counts(p0, batch.num_rows), exact_p0(batch), atol=1e-12)


def test_bitarray_marginals_read_the_right_bits() -> None:
    """Bits 0..15 of two packed bytes: shot 0 sets bits {0, 9}, shot 1 sets {3, 9, 15}."""
    shots = np.zeros((1, 2, 2), dtype=np.uint8)
    shots[0, 0] = [0b00000010, 0b00000001]
    shots[0, 1] = [0b10000010, 0b00001000]
    ones = ones_per_clbit(shots, 16)
    want = np.zeros(16, dtype=int)
    want[[0, 3, 15]] = 1
    want[9] = 2
    assert ones.tolist() == [want.tolist()]
