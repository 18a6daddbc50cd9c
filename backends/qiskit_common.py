"""Pieces the Aer and IBM backends share: fake devices, qubit choice, ISA cache, marginals.

Edge circuits never entangle, so a packed template only touches W physical
qubits. We therefore transpile against a *compact* target holding just those
qubits (their gates, errors and T1/T2, renumbered 0..W−1) and derive the
Aer noise model from it with Aer's own device-model functions: the same
errors as the full device model, at a fraction of the build and run time.
"""

import json
import os
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
from qiskit import QuantumCircuit, transpile
from qiskit.providers import BackendV2
from qiskit.transpiler import Target
from qiskit_aer.noise import NoiseModel
from qiskit_aer.noise.device.models import basic_device_gate_errors, basic_device_readout_errors

from qkan_orch.backends.names import did_you_mean
from qkan_orch.circuits.batch import Template
from qkan_orch.circuits.lower_qiskit import qiskit_template
from qkan_orch.models.errors import InputError

if TYPE_CHECKING:  # qiskit-ibm-runtime takes a second to import; Aer alone does not need it
    from qiskit_ibm_runtime.models import BackendProperties

_UNIVERSAL = ("measure", "delay", "reset")


@cache
def fake_backend_classes() -> dict[str, type]:
    """``fake_<name>`` → class, for every fake device qiskit-ibm-runtime ships."""
    from qiskit_ibm_runtime import fake_provider
    from qiskit_ibm_runtime.fake_provider.fake_backend import FakeBackendV2

    found = {}
    for attr in dir(fake_provider):
        cls = getattr(fake_provider, attr)
        if isinstance(cls, type) and issubclass(cls, FakeBackendV2) and hasattr(cls, "conf_filename"):
            stem = attr.removeprefix("Fake").removesuffix("V2").removesuffix("Backend").lower()
            found[f"fake_{stem}"] = cls
    return found


@cache
def fake_qubits(name: str) -> int:
    """Qubit count read from the fake device's configuration file, without building it."""
    cls = fake_backend_classes()[name]
    with open(os.path.join(cls.dirname, cls.conf_filename), encoding="utf-8") as fh:
        return int(json.load(fh)["n_qubits"])


def check_fake_name(name: str) -> None:
    classes = fake_backend_classes()
    if name not in classes:
        raise InputError("backend", f"no IBM fake device '{name}'{did_you_mean(name, classes)} "
                         f"({len(classes)} known: `qkan-orch backends --filter fake_` lists them)")


@cache
def fake_backend(name: str) -> BackendV2:
    check_fake_name(name)
    return fake_backend_classes()[name]()


def best_qubits(target: Target, count: int) -> tuple[int, ...]:
    """The ``count`` qubits with the lowest read-out error, then √X error; uncalibrated ones last."""

    def error(name: str, qubit: int) -> float:
        props = target[name].get((qubit,)) if name in target else None
        return props.error if props is not None and props.error is not None else 1.0

    ranked = sorted(range(target.num_qubits), key=lambda q: (error("measure", q), error("sx", q), q))
    if count > len(ranked):
        raise InputError("pack", f"needs {count} qubits, the device has {len(ranked)}")
    return tuple(ranked[:count])


def qubit_calibration(target: Target, props: "BackendProperties | None") -> list[dict]:
    """Per physical qubit: read-out and √X error, T2 (µs), and whether the provider calls it operational."""

    def error(name: str, qubit: int) -> float | None:
        entry = target[name].get((qubit,)) if name in target else None
        return entry.error if entry is not None else None

    table = []
    for q in range(target.num_qubits):
        qp = target.qubit_properties[q] if target.qubit_properties else None
        t2 = getattr(qp, "t2", None)
        operational = props.is_qubit_operational(q) if props is not None else True
        table.append({"qubit": q, "readout_error": error("measure", q), "sx_error": error("sx", q),
                      "t2_us": t2 * 1e6 if t2 else None, "operational": bool(operational)})
    return table


def compact_target(target: Target, qubits: tuple[int, ...]) -> Target:
    """A W-qubit target with the single-qubit instructions and properties of ``qubits``."""
    props = target.qubit_properties
    compact = Target(
        num_qubits=len(qubits), dt=target.dt,
        qubit_properties=[props[q] for q in qubits] if props else None,
    )
    for name in target.operation_names:
        operation = target.operation_from_name(name)
        if getattr(operation, "num_qubits", 0) != 1 and name not in _UNIVERSAL:
            continue
        entries = {(i,): target[name][(q,)] for i, q in enumerate(qubits) if (q,) in target[name]}
        if entries:
            compact.add_instruction(operation, entries, name=name)
    return compact


def noise_model(target: Target) -> NoiseModel:
    """Aer's device noise model (depolarizing + thermal relaxation + read-out) of ``target``."""
    model = NoiseModel(basis_gates=[n for n in target.operation_names if n not in _UNIVERSAL])
    for qubits, error in basic_device_readout_errors(None, target=target):
        model.add_readout_error(error, qubits)
    for name, qubits, error in basic_device_gate_errors(None, target=target):
        model.add_quantum_error(error, name, qubits)
    return model


_isa_cache: dict[tuple, QuantumCircuit] = {}


def isa_template(template: Template, width: int, target: Target | None, key: tuple = (),
                 layout: tuple[int, ...] | None = None) -> QuantumCircuit:
    """The packed template transpiled for ``target`` (on ``layout``'s qubits) — once per (key, template, W)."""
    cache_key = (key, template, width, layout)
    if cache_key not in _isa_cache:
        circuit = qiskit_template(template, width)
        if target is not None:
            circuit = transpile(circuit, target=target, initial_layout=list(layout) if layout else None,
                                optimization_level=1, seed_transpiler=0)
            if circuit.num_parameters != width * template.num_params:
                raise RuntimeError("transpilation dropped template parameters")
        _isa_cache[cache_key] = circuit
    return _isa_cache[cache_key]


def pubs_for(circuit: QuantumCircuit, packed: np.ndarray) -> list[tuple[QuantumCircuit, np.ndarray]]:
    """The PUBs that run every row of ``packed`` on ``circuit``: one, binding the whole matrix — except for a
    circuit without parameters (read-out calibration), which Aer and Runtime sample once whatever number of
    empty rows it is given, so each of its k circuits is a PUB of its own."""
    if packed.shape[1] or packed.shape[0] <= 1:
        return [(circuit, packed)]
    return [(circuit, packed[k:k + 1]) for k in range(packed.shape[0])]


def ones_per_clbit(array: np.ndarray, num_bits: int) -> np.ndarray:
    """Count of 1 outcomes per classical bit from a BitArray's packed ``array``.

    ``array`` has shape (circuits, shots, bytes) — (shots, bytes) for a PUB without parameters — with bit
    k in byte ``bytes − 1 − k // 8`` at position ``k % 8`` (Qiskit's big-endian packing).
    """
    circuits = array.reshape(-1, *array.shape[-2:])
    bits = np.unpackbits(circuits, axis=-1, bitorder="big")  # column c holds bit 8·bytes − 1 − c
    ones = bits.sum(axis=1, dtype=np.int64)[:, ::-1]
    return ones[:, :num_bits]
