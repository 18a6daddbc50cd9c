"""A device's noise as the emulator applies it: per physical qubit, one Bloch-vector map per gate and a read-out
assignment, read from the same numbers (and by the same rules) as Aer's ``NoiseModel.from_backend``.

A one-qubit state is its Bloch vector v = (x, y, z), ρ = (I + x·X + y·Y + z·Z)/2. Every noise channel the
emulator needs is diagonal-plus-offset in that basis (its Pauli-transfer matrix), so one gate's noise on a
qubit is three numbers: ``(x, y, z) → (a·x, a·y, b·z + c)``.

IBM fakes, after each gate G on qubit q (rz is virtual: zero error and duration, hence no channel):

* thermal relaxation over the gate's duration t, T2 capped at 2·T1 (temperature 0, so it relaxes to |0⟩):
  e1 = exp(−t/T1), e2 = exp(−t/T2); x, y → e2·x, e2·y and z → e1·z + (1 − e1);
* before it, depolarizing ρ → (1 − λ)ρ + λ·I/2, with λ chosen so that the composition's average gate
  infidelity is the reported gate error ε: with the relaxation's average fidelity
  F_r = (2·F_pro + 1)/3, F_pro = (1 + e1 + 2·e2)/4, λ = 2(ε − (1 − F_r)) / (2·F_r − 1) when ε > 1 − F_r
  (ε capped at 2/3, λ at 4/3), else no depolarizing part — Aer's ``_device_depolarizing_error``;
* composed (depolarizing, then relaxation, as Aer's ``depol.compose(relax)``):
  a = e2·(1 − λ), b = e1·(1 − λ), c = 1 − e1.

Read-out: P(1|0) = ``prob_meas1_prep0`` and P(0|1) = ``prob_meas0_prep1`` of the qubit's ``measure`` where the
target carries them, else its ``error`` for both (Aer's ``basic_device_readout_errors``).

``emulate:dm`` (Braket's ``local_dm`` model): depolarizing p after every gate but the identity, Braket's
ρ → (1 − p)ρ + p/3·(XρX + YρY + ZρZ), i.e. a = b = 1 − 4p/3, c = 0; a read-out bit flip p on every qubit.
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from qkan_orch.models.errors import InputError

if TYPE_CHECKING:  # emulate:dm needs no Qiskit
    from qiskit.transpiler import Target

NON_GATES = ("measure", "delay", "reset")  # never in an edge circuit's body; measure is the read-out below
BRAKET_NOISY_GATES = ("h", "x", "z", "rz", "ry")  # backends.braket_local.NOISY_GATES: not the identity
# braket:local_dm's default noise, which emulate:dm shares; here, so that neither needs the other's SDK
DEPOLARIZING = 0.003
READOUT_FLIP = 0.02


@dataclass(frozen=True)
class Channel:
    """One gate's noise on each of W qubits: (x, y, z) → (a·x, a·y, b·z + c), arrays of shape (W,)."""

    transverse: np.ndarray  # a
    longitudinal: np.ndarray  # b
    offset: np.ndarray  # c

    @classmethod
    def identity(cls, width: int) -> "Channel":
        return cls(np.ones(width), np.ones(width), np.zeros(width))

    @property
    def trivial(self) -> bool:
        """No noise on any qubit: the emulator skips the arithmetic (rz, the identity)."""
        return bool(np.all(self.transverse == 1.0) and np.all(self.longitudinal == 1.0) and not self.offset.any())


@dataclass(frozen=True)
class DeviceNoise:
    """The noise of the W physical qubits a round runs on (copy w on ``qubits[w]``), per gate name.

    A gate without an entry is noiseless. ``p1_given_0``/``p0_given_1`` are the read-out assignment errors,
    shape (W,).
    """

    qubits: tuple[int, ...]
    gates: dict[str, Channel]
    p1_given_0: np.ndarray
    p0_given_1: np.ndarray

    def channel(self, gate: str) -> Channel | None:
        found = self.gates.get(gate)
        return None if found is None or found.trivial else found


def relaxation(t1: float | None, t2: float | None, duration: float) -> tuple[float, float]:
    """(e1, e2) of thermal relaxation over ``duration``; a missing T1 never relaxes, a missing T2 is 2·T1."""
    t2 = 2 * t1 if t2 is None and t1 is not None else t2
    if t1 is not None and t2 is not None:
        t2 = min(t2, 2 * t1)
    e1 = math.exp(-duration / t1) if t1 else 1.0
    e2 = math.exp(-duration / t2) if t2 else 1.0
    return e1, e2


def depolarizing_parameter(error: float | None, e1: float, e2: float) -> float:
    """λ of the depolarizing part, so that with relaxation (e1, e2) the average gate infidelity is ``error``."""
    relax_fidelity = (2 * (1 + e1 + 2 * e2) / 4 + 1) / 3
    if not error or error <= 1 - relax_fidelity:
        return 0.0
    error = min(error, 2 / 3)
    return min(2 * (error - (1 - relax_fidelity)) / (2 * relax_fidelity - 1), 4 / 3)


def gate_map(t1: float | None, t2: float | None, error: float | None, duration: float | None
             ) -> tuple[float, float, float]:
    """(a, b, c) of one gate on one qubit: its depolarizing part, then relaxation over its duration (none
    without one). One rule for ``ibm_noise`` and calibration snapshots, so both give the same numbers."""
    e1, e2 = relaxation(t1, t2, duration) if duration else (1.0, 1.0)
    keep = 1.0 - depolarizing_parameter(error, e1, e2)
    return e2 * keep, e1 * keep, 1.0 - e1


def ibm_noise(target: "Target", qubits: tuple[int, ...]) -> DeviceNoise:
    """The noise of a compact target (``qiskit_common.compact_target``: its qubit w is physical ``qubits[w]``)."""
    width = target.num_qubits
    props = target.qubit_properties or [None] * width
    gates: dict[str, Channel] = {}
    for name in target.operation_names:
        if name in NON_GATES or getattr(target.operation_from_name(name), "num_qubits", 0) != 1:
            continue
        a, b, c = np.ones(width), np.ones(width), np.zeros(width)
        for w in range(width):
            inst = target[name].get((w,))
            if inst is not None:
                a[w], b[w], c[w] = gate_map(getattr(props[w], "t1", None), getattr(props[w], "t2", None),
                                            inst.error, inst.duration)
        gates[name] = Channel(a, b, c)
    p10, p01 = np.zeros(width), np.zeros(width)
    measure = target["measure"] if "measure" in target else {}
    for w in range(width):
        inst = measure.get((w,))
        if inst is None:
            continue
        if hasattr(inst, "prob_meas1_prep0") and hasattr(inst, "prob_meas0_prep1"):
            p10[w], p01[w] = inst.prob_meas1_prep0, inst.prob_meas0_prep1
        else:
            p10[w] = p01[w] = inst.error or 0.0
    return DeviceNoise(qubits, gates, p10, p01)


def braket_noise(width: int, depolarizing: float, readout_flip: float) -> DeviceNoise:
    """``braket:local_dm``'s model on W identical qubits."""
    shrink = np.full(width, 1.0 - 4.0 * depolarizing / 3.0)
    channel = Channel(shrink, shrink, np.zeros(width))
    flip = np.full(width, readout_flip)
    return DeviceNoise(tuple(range(width)), {g: channel for g in BRAKET_NOISY_GATES}, flip, flip.copy())


def noiseless(width: int, qubits: tuple[int, ...] | None = None) -> DeviceNoise:
    """The ideal device (option ``noise=false``): every gate exact, read-out perfect."""
    return DeviceNoise(qubits or tuple(range(width)), {}, np.zeros(width), np.zeros(width))


def braket_options(options: dict[str, Any]) -> tuple[float, float]:
    """(depolarizing, readout_flip) from the options of ``braket:local_dm`` and ``emulate:dm`` (the same
    options, checked by this one function); ``noise=false`` is both 0."""
    if not options.get("noise", True):
        return 0.0, 0.0
    values = []
    for key, default in (("depolarizing", DEPOLARIZING), ("readout_flip", READOUT_FLIP)):
        value = options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 0.5:
            raise InputError(f"options.{key}", f"must be a probability in [0, 0.5], got {value!r}")
        values.append(float(value))
    return values[0], values[1]
