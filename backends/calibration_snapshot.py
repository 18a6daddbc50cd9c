"""Calibration snapshots: a device's calibration as a versioned JSON document (``snapshot_emulator`` runs it).

A hardware job runs under one calibration of its device (per-qubit T1, T2, read-out, gate errors and
durations). The worker stores it once per (backend, calibration time) (``service.store.calibrations``) and
names it on the job's placement; ``emulate:calibration:<id>`` rebuilds that device's noise from the stored
document, so yesterday's hardware run can be reproduced offline.

Version 1 of the document (``CalibrationDocument.to_json``; every field checked by ``from_json``, which names
the failing one, e.g. ``document.qubits[3].t1``)::

    {"version": 1, "backend": "ibm:fake_torino", "calibrated_at": "2025-02-26T20:26:08+00:00",
     "basis_gates": ["id", "rz", "sx", "x"], "dt": 4e-09,
     "qubits": [{"qubit": 0, "t1": 2.2e-4, "t2": 3.1e-4, "p1_given_0": 0.168, "p0_given_1": 0.165,
                 "operational": true, "gates": {"sx": {"error": 3.4e-4, "duration": 3.2e-8}, …}}, …]}

T1, T2 and durations in seconds (null: not reported); ``p1_given_0``/``p0_given_1`` the read-out assignment
errors (an upload may give one ``readout_error`` for both; absent: perfect read-out). A gate missing from a
qubit's ``gates`` is noiseless there. The noise is the emulator's (``emulator_noise.gate_map``: the
depolarizing part of the gate error, then T1/T2 relaxation over its duration), so a document built from a
Qiskit Target gives exactly ``ibm_noise`` of that Target.

Documents live in the service's database, which ``backends/`` must not import. The service therefore installs
a resolver at startup, in the API and in every worker process (``install_resolver``); ``get_backend`` asks it
for a document by id. A process without one (a notebook) cannot name a snapshot, and says so.
"""

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from qkan_orch.backends.base import Backend
from qkan_orch.backends.emulator_noise import (
    BRAKET_NOISY_GATES,
    NON_GATES,
    Channel,
    DeviceNoise,
    gate_map,
)
from qkan_orch.models.errors import InputError

if TYPE_CHECKING:
    from qiskit.transpiler import Target

log = logging.getLogger("qkan.backends")
VERSION = 1
MAX_QUBITS = 10_000  # more than any device; bounds what an upload can make the service hold
# one-qubit gates the emulator can apply: fixed unitaries or rotations by one angle (emulator.PLANES)
SUPPORTED_GATES = ("id", "x", "y", "z", "h", "s", "sdg", "t", "tdg", "sx", "sxdg", "rz", "rx", "ry", "p")
QUBIT_KEYS = {"qubit", "t1", "t2", "p1_given_0", "p0_given_1", "readout_error", "operational", "gates"}
DOCUMENT_KEYS = {"version", "backend", "calibrated_at", "basis_gates", "dt", "qubits"}


@dataclass(frozen=True)
class GateCalibration:
    error: float | None  # average gate infidelity
    duration: float | None  # seconds


@dataclass(frozen=True)
class QubitCalibration:
    qubit: int
    t1: float | None  # seconds
    t2: float | None
    p1_given_0: float | None  # read-out assignment errors; None: not calibrated (read perfectly)
    p0_given_1: float | None
    operational: bool
    gates: dict[str, GateCalibration] = field(default_factory=dict)

    @property
    def readout_error(self) -> float:
        return ((self.p1_given_0 or 0.0) + (self.p0_given_1 or 0.0)) / 2


@dataclass(frozen=True)
class CalibrationDocument:
    """One device calibration (version 1 of the document, see the module docstring)."""

    backend: str
    calibrated_at: datetime  # aware
    basis_gates: tuple[str, ...]
    qubits: tuple[QubitCalibration, ...]
    dt: float | None = None
    version: int = VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version, "backend": self.backend, "calibrated_at": self.calibrated_at.isoformat(),
            "basis_gates": list(self.basis_gates), "dt": self.dt,
            "qubits": [{"qubit": q.qubit, "t1": q.t1, "t2": q.t2, "p1_given_0": q.p1_given_0,
                        "p0_given_1": q.p0_given_1, "operational": q.operational,
                        "gates": {g: {"error": c.error, "duration": c.duration} for g, c in q.gates.items()}}
                       for q in self.qubits],
        }

    @classmethod
    def from_json(cls, obj: Any, where: str = "document") -> "CalibrationDocument":
        """The document ``obj``, checked field by field; an InputError names the first bad one (``where.…``)."""
        _keys(obj, DOCUMENT_KEYS, where, required=("version", "backend", "calibrated_at", "basis_gates", "qubits"))
        if obj["version"] != VERSION or isinstance(obj["version"], bool):
            raise InputError(f"{where}.version", f"must be {VERSION} (the only version), got {obj['version']!r}")
        backend = obj["backend"]
        if not isinstance(backend, str) or not 0 < len(backend) <= 200:
            raise InputError(f"{where}.backend", f"must be a backend name of 1..200 characters, got {backend!r}")
        calibrated_at = _time(obj["calibrated_at"], f"{where}.calibrated_at")
        basis = obj["basis_gates"]
        if (not isinstance(basis, list) or not basis or any(g not in SUPPORTED_GATES for g in basis)
                or len(set(basis)) != len(basis)):
            raise InputError(f"{where}.basis_gates", f"must be distinct gate names among {', '.join(SUPPORTED_GATES)}"
                             f", got {basis!r}")
        dt = _number(obj.get("dt"), f"{where}.dt", positive=True)
        raw = obj["qubits"]
        if not isinstance(raw, list) or not 0 < len(raw) <= MAX_QUBITS:
            raise InputError(f"{where}.qubits", f"must be a list of 1..{MAX_QUBITS} qubits")
        qubits = tuple(_qubit(q, f"{where}.qubits[{i}]", basis) for i, q in enumerate(raw))
        numbers = [q.qubit for q in qubits]
        if len(set(numbers)) != len(numbers):
            raise InputError(f"{where}.qubits", "names a qubit twice")
        if not any(q.operational for q in qubits):
            raise InputError(f"{where}.qubits", "has no operational qubit")
        return cls(backend, calibrated_at, tuple(basis), qubits, dt)

    def qubit(self, number: int) -> QubitCalibration | None:
        return next((q for q in self.qubits if q.qubit == number), None)

    def operational(self) -> list[QubitCalibration]:
        return [q for q in self.qubits if q.operational]

    def check_qubits(self, chosen: Any, width: int) -> tuple[int, ...]:
        """``chosen`` as W distinct operational qubits of this calibration, or an InputError on options.qubits."""
        if (not isinstance(chosen, list | tuple) or len(chosen) != width
                or any(isinstance(q, bool) or not isinstance(q, int) for q in chosen)):
            raise InputError("options.qubits", f"must be a list of {width} physical qubit numbers (one per "
                             f"packed copy), got {chosen!r}")
        if len(set(chosen)) != len(chosen):
            raise InputError("options.qubits", f"must be distinct qubits, got {list(chosen)}")
        for q in chosen:
            found = self.qubit(q)
            if found is None:
                raise InputError("options.qubits", f"qubit {q} is not in the {self.backend} calibration "
                                 f"({len(self.qubits)} qubits)")
            if not found.operational:
                raise InputError("options.qubits", f"qubit {q} of {self.backend} was not operational")
        return tuple(chosen)

    def best_qubits(self, width: int) -> tuple[int, ...]:
        """The ``width`` operational qubits with the lowest read-out, then √X, error (as ``aer:<fake>`` picks)."""

        def sx(q: QubitCalibration) -> float:
            gate = q.gates.get("sx")
            return gate.error if gate is not None and gate.error is not None else 1.0

        ranked = sorted(self.operational(), key=lambda q: (q.readout_error, sx(q), q.qubit))
        if width > len(ranked):
            raise InputError("pack", f"needs {width} qubits; {len(ranked)} are operational in this calibration")
        return tuple(q.qubit for q in ranked[:width])

    def noise(self, qubits: tuple[int, ...]) -> DeviceNoise:
        """The emulator's noise of ``qubits`` (copy w on ``qubits[w]``), by ``ibm_noise``'s rule."""
        calibrations = [self.qubit(q) for q in qubits]
        assert all(c is not None for c in calibrations), "qubits are checked before"
        width = len(qubits)
        gates = {}
        for name in self.basis_gates:
            a, b, c = np.ones(width), np.ones(width), np.zeros(width)
            for w, cal in enumerate(calibrations):
                gate = cal.gates.get(name) if cal else None
                if gate is not None and cal is not None:
                    a[w], b[w], c[w] = gate_map(cal.t1, cal.t2, gate.error, gate.duration)
            gates[name] = Channel(a, b, c)
        p10 = np.array([(c.p1_given_0 or 0.0) if c else 0.0 for c in calibrations])
        p01 = np.array([(c.p0_given_1 or 0.0) if c else 0.0 for c in calibrations])
        return DeviceNoise(tuple(qubits), gates, p10, p01)

    def target(self, qubits: tuple[int, ...]) -> "Target":
        """A compact Target of ``qubits`` (its qubit w is ``qubits[w]``) with the basis, errors, durations, T1/T2:
        what ``qiskit_common.compact_target`` makes of the device's own."""
        from qiskit.circuit import Measure
        from qiskit.circuit.library import get_standard_gate_name_mapping
        from qiskit.providers import QubitProperties
        from qiskit.transpiler import InstructionProperties, Target

        calibrations = [self.qubit(q) for q in qubits]
        target = Target(num_qubits=len(qubits), dt=self.dt,
                        qubit_properties=[QubitProperties(t1=c.t1, t2=c.t2) for c in calibrations if c])
        gates = get_standard_gate_name_mapping()
        for name in self.basis_gates:
            entries = {(w,): InstructionProperties(duration=g.duration, error=g.error)
                       for w, c in enumerate(calibrations) if c and (g := c.gates.get(name)) is not None}
            if entries:
                target.add_instruction(gates[name], entries, name=name)
        target.add_instruction(Measure(), {(w,): InstructionProperties(error=c.readout_error if c else None)
                                           for w, c in enumerate(calibrations)})
        return target


def _keys(obj: Any, allowed: set[str], where: str, required: tuple[str, ...]) -> None:
    if not isinstance(obj, dict):
        raise InputError(where, "must be a JSON object")
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise InputError(f"{where}.{unknown[0]}", f"is not a field of a version-{VERSION} calibration document")
    missing = [k for k in required if k not in obj]
    if missing:
        raise InputError(f"{where}.{missing[0]}", "is required")


def _number(value: Any, where: str, *, positive: bool = False, probability: bool = False) -> float | None:
    """A finite number (null allowed): > 0 if ``positive``, in [0, 1] if ``probability``, else ≥ 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(where, f"must be a finite number or null, got {value!r}")
    if (positive and value <= 0) or value < 0 or (probability and value > 1):
        wanted = "positive" if positive else "a probability in [0, 1]" if probability else "non-negative"
        raise InputError(where, f"must be {wanted}, got {value!r}")
    return float(value)


def _time(value: Any, where: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InputError(where, f"must be an ISO 8601 time with a time zone, got {value!r}")
    return parsed


def _qubit(obj: Any, where: str, basis: list[str]) -> QubitCalibration:
    _keys(obj, QUBIT_KEYS, where, required=("qubit", "operational"))
    number = obj["qubit"]
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise InputError(f"{where}.qubit", f"must be a non-negative integer, got {number!r}")
    if not isinstance(obj["operational"], bool):
        raise InputError(f"{where}.operational", f"must be true or false, got {obj['operational']!r}")
    single = _number(obj.get("readout_error"), f"{where}.readout_error", probability=True)
    if single is not None and ("p1_given_0" in obj or "p0_given_1" in obj):
        raise InputError(f"{where}.readout_error", "give readout_error or p1_given_0 and p0_given_1, not both")
    p10 = _number(obj.get("p1_given_0", single), f"{where}.p1_given_0", probability=True)
    p01 = _number(obj.get("p0_given_1", single), f"{where}.p0_given_1", probability=True)
    gates_in = obj.get("gates", {})
    if not isinstance(gates_in, dict):
        raise InputError(f"{where}.gates", "must be an object of gate name → {error, duration}")
    gates = {}
    for name, entry in gates_in.items():
        at = f"{where}.gates.{name}"
        if name not in basis:
            raise InputError(at, f"is not one of the basis gates {basis}")
        _keys(entry, {"error", "duration"}, at, required=())
        gates[name] = GateCalibration(_number(entry.get("error"), f"{at}.error", probability=True),
                                      _number(entry.get("duration"), f"{at}.duration"))
    return QubitCalibration(number, _number(obj.get("t1"), f"{where}.t1", positive=True),
                            _number(obj.get("t2"), f"{where}.t2", positive=True), p10, p01,
                            obj["operational"], gates)


# -- building a document from what a device publishes -------------------------------------------------------


def from_target(backend: str, target: "Target", calibrated_at: datetime, props: Any = None) -> CalibrationDocument:
    """The calibration a Qiskit Target holds — the numbers ``ibm_noise`` reads. With the device's
    BackendProperties, read-out is its P(1|0), P(0|1) where it gives them (as the fake devices' own noise model
    reads it; a Target keeps one error) and qubits it calls not operational are marked so."""
    props_list = target.qubit_properties or [None] * target.num_qubits
    names = [n for n in target.operation_names
             if n not in NON_GATES and getattr(target.operation_from_name(n), "num_qubits", 0) == 1]
    basis = tuple(n for n in names if n in SUPPORTED_GATES)
    measure = target["measure"] if "measure" in target else {}
    qubits = []
    for q in range(target.num_qubits):
        gates = {name: GateCalibration(_float(inst.error), _float(inst.duration))
                 for name in basis if (inst := target[name].get((q,))) is not None}
        p10, p01 = _readout(measure.get((q,)), props, q)
        operational = bool(props.is_qubit_operational(q)) if props is not None else True
        qp = props_list[q]
        qubits.append(QubitCalibration(q, _or_none(getattr(qp, "t1", None)), _or_none(getattr(qp, "t2", None)),
                                       p10, p01, operational, gates))
    return CalibrationDocument(backend, calibrated_at, basis, tuple(qubits), _or_none(target.dt))


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _or_none(value: float | None) -> float | None:
    """A coherence time or ``dt`` as reported, None where it is missing or not positive."""
    return float(value) if value is not None and value > 0 else None


def _readout(inst: Any, props: Any, qubit: int) -> tuple[float | None, float | None]:
    """(P(1|0), P(0|1)): the properties' own where present, else the Target's as ``ibm_noise`` reads them."""
    if props is not None:
        found = props.qubit_property(qubit) if qubit < len(props.qubits) else {}
        if "prob_meas1_prep0" in found and "prob_meas0_prep1" in found:
            return float(found["prob_meas1_prep0"][0]), float(found["prob_meas0_prep1"][0])
    if inst is None:
        return None, None
    if hasattr(inst, "prob_meas1_prep0") and hasattr(inst, "prob_meas0_prep1"):
        return float(inst.prob_meas1_prep0), float(inst.prob_meas0_prep1)
    return (None, None) if inst.error is None else (float(inst.error), float(inst.error))


def from_braket(backend: str, props: Any) -> CalibrationDocument | None:
    """A Braket device's standardized calibration (what ``braket_calibration`` reads, plus T1): the template's
    own gates (the device runs its OpenQASM) each with the qubit's RB error and no duration, one read-out
    error. None without per-qubit calibration or a calibration time."""
    from qkan_orch.backends.braket_calibration import braket_calibration, braket_calibration_time

    table, when = braket_calibration(props), braket_calibration_time(props)
    if table is None or when is None:
        return None
    std = props.standardized
    per_qubit = {int(k): v for k, v in std.oneQubitProperties.items()}
    qubits = []
    for row in table:
        raw = per_qubit.get(row["qubit"])
        t1 = _seconds(getattr(raw, "T1", None) or getattr(std, "T1", None)) if raw is not None else None
        t2 = row["t2_us"] * 1e-6 if row["t2_us"] else None
        gates = ({} if row["sx_error"] is None else
                 {g: GateCalibration(min(max(row["sx_error"], 0.0), 1.0), None) for g in BRAKET_NOISY_GATES})
        readout = None if row["readout_error"] is None else min(max(row["readout_error"], 0.0), 1.0)
        qubits.append(QubitCalibration(row["qubit"], t1, t2, readout, readout, row["operational"], gates))
    calibrated_at = datetime.fromisoformat(when)
    return CalibrationDocument(backend, calibrated_at if calibrated_at.tzinfo else calibrated_at.replace(tzinfo=UTC),
                               BRAKET_NOISY_GATES, tuple(qubits))


def _seconds(duration: Any) -> float | None:
    from qkan_orch.backends.braket_calibration import _microseconds

    found = _microseconds(duration)
    return found * 1e-6 if found else None


def device_snapshot(backend: Backend) -> CalibrationDocument | None:
    """The calibration ``backend`` (``ibm:*`` or ``braket:arn:…``, possibly mitigated) runs under now; None for
    any other backend or a device that publishes none. Built once per (device, calibration time)."""
    inner = getattr(backend, "inner", backend)
    calibration_time = getattr(inner, "calibration_time", None)
    if not (inner.name.startswith("ibm:") or inner.name.startswith("braket:arn:")) or calibration_time is None:
        return None
    when = calibration_time()
    if when is None:
        return None
    return _snapshot_of(inner, when)


_built: dict[tuple[str, str], CalibrationDocument | None] = {}


def _snapshot_of(backend: Any, when: str) -> CalibrationDocument | None:
    """The document, checked against its own schema: what a device reports outside it (an error above 1)
    is logged and leaves the round without a snapshot rather than failing the job."""
    key = (backend.name, when)
    if key not in _built:
        if backend.name.startswith("ibm:"):
            # the backend's own device and properties, fetched once per instance (a real device: one request)
            device = backend._backend()
            built = from_target(backend.name, device.target, datetime.fromisoformat(when), backend._props or None)
        else:
            built = from_braket(backend.name, backend.device.properties)
        try:
            _built[key] = None if built is None else CalibrationDocument.from_json(built.to_json())
        except InputError as exc:
            log.warning("%s: calibration of %s not stored: %s", backend.name, when, exc)
            _built[key] = None
    return _built[key]


# -- where stored documents come from -----------------------------------------------------------------------

Resolver = Callable[[str], dict[str, Any] | None]
_resolver: Resolver | None = None
_documents: dict[str, CalibrationDocument] = {}  # id → document; stored documents never change
_lock = threading.Lock()


def install_resolver(resolver: Resolver) -> None:
    """How this process reads a stored document by id (the service installs one reading its database)."""
    global _resolver
    _resolver = resolver


def resolve(snapshot_id: str) -> CalibrationDocument:
    """The stored document ``snapshot_id``, or an InputError naming ``backend``."""
    with _lock:
        found = _documents.get(snapshot_id)
    if found is not None:
        return found
    if _resolver is None:
        raise InputError("backend", "calibration snapshots are stored by the service; this process has none")
    raw = _resolver(snapshot_id) if snapshot_id else None
    if raw is None:
        raise InputError("backend", f"no calibration snapshot '{snapshot_id}' (GET /v1/calibrations lists them)")
    document = CalibrationDocument.from_json(raw)
    with _lock:
        _documents[snapshot_id] = document
    return document
