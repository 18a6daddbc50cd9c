"""``emulate:<device>``: every edge circuit as a noisy one-qubit state, evolved in torch for all rows at once.

A row's state is its Bloch vector v = (x, y, z) (ρ = (I + x·X + y·Y + z·Z)/2; float64, shape (rows, 3)),
starting at |0⟩ = (0, 0, 1). A gate U acts on it as the rotation R_ij = ½·Tr(σ_i U σ_j U†) — a fixed 3×3
matrix, or for rz/rx/ry(φ) a rotation by φ in the (x, y), (y, z) or (z, x) plane, φ an affine function of
the row's parameters. After each gate comes the gate's noise on the row's physical qubit, the Pauli-transfer
map (x, y, z) → (a·x, a·y, b·z + c) of ``backends.emulator_noise`` (depolarizing part of the gate error, then
thermal relaxation over its duration — the composition Aer's ``NoiseModel.from_backend`` builds). Then
p0 = (1 + z)/2, read through the qubit's assignment matrix: p̂0 = (1 − P(1|0))·p0 + P(0|1)·(1 − p0).

The gates are those the device would run: for an IBM fake the packed template lowered to its ISA by
``qiskit_common.isa_template`` on the qubits ``aer:<fake>`` picks (the W best read-out qubits, or the
``qubits`` option), so the emulator applies the very rz/sx/x sequence Aer runs; ``emulate:dm`` runs the
template's own gates with ``braket:local_dm``'s noise (same options). Row r runs as copy r % W
(``circuits.packing``), on that copy's qubit and with its noise; the arithmetic is per row, so a wide packing
costs what a narrow one does. Without ``shots`` the result is the exact noisy p0 (standard error 0); with
``shots`` each row's zeros are drawn Binomial(shots, p̂0), seeded by the ``seed`` option.

The same kernel trains: ``noisy_p0`` is differentiable in the angles, and ``EmulatedDevice`` (built by
``emulated_device`` from ``--noise``/``--qubits``) gives ``models.noise_aware.NoisyForward`` the placement and the
noisy p̂0 of every activation, as ``aer:<device>`` would run it.
"""

import math
import time
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qkan_orch.backends.base import Backend, Capabilities, Handle, Pack, SeedStream
from qkan_orch.backends.emulator_noise import (
    DEPOLARIZING,
    READOUT_FLIP,
    DeviceNoise,
    braket_noise,
    braket_options,
    ibm_noise,
    noiseless,
)
from qkan_orch.backends.names import did_you_mean
from qkan_orch.circuits.batch import ActivationBatch, BatchResult, Parts, Template, parts_of
from qkan_orch.circuits.packing import binomial_p0
from qkan_orch.models.errors import InputError

if TYPE_CHECKING:  # Qiskit is imported only by the IBM fakes' emulators
    from qiskit import QuantumCircuit
    from qiskit.circuit import Instruction

    from qkan_orch.models.layer import QKANLayer

MAX_SHOTS = 10_000_000
DM_QUBITS = 13  # braket:local_dm's size; any width costs the same here
PLANES = {"rz": (0, 1), "p": (0, 1), "u1": (0, 1), "rx": (1, 2), "ry": (2, 0)}  # rotated Bloch components
_S = 1 / math.sqrt(2)
FIXED = {"id": np.eye(2), "x": np.array([[0, 1], [1, 0]]), "z": np.diag([1, -1]),
         "h": np.array([[_S, _S], [_S, -_S]])}
PAULIS = (np.array([[0, 1], [1, 0]]), np.array([[0, -1j], [1j, 0]]), np.diag([1.0, -1.0]))


def bloch_rotation(unitary: np.ndarray) -> np.ndarray:
    """The 3×3 rotation a 2×2 unitary makes of the Bloch vector (its Pauli-transfer matrix without the I row)."""
    u = np.asarray(unitary, dtype=np.complex128)
    return np.array([[0.5 * np.trace(si @ u @ sj @ u.conj().T).real for sj in PAULIS] for si in PAULIS])


@dataclass(frozen=True)
class Op:
    """One gate of a copy: a fixed ``rotation``, or a rotation in ``plane`` by params·coefficients + constant."""

    gate: str
    rotation: tuple[tuple[float, ...], ...] | None = None
    plane: tuple[int, int] = (0, 1)
    coefficients: tuple[float, ...] = ()  # over the copy's own P columns
    constant: float = 0.0


def fixed_op(gate: str, unitary: np.ndarray) -> Op:
    return Op(gate, rotation=tuple(tuple(round(float(v), 15) for v in row) for row in bloch_rotation(unitary)))


def template_program(template: Template) -> tuple[Op, ...]:
    """The template's own gates (as ``braket:local_dm`` runs them): fences are no gates, the identity is one."""
    ops = []
    for step in template.steps:
        if step.column is None:
            ops.append(fixed_op(step.name, FIXED[step.name]))
        else:
            coefficients = [0.0] * template.num_params
            coefficients[step.column] = float(step.sign)
            ops.append(Op(step.name, plane=PLANES[step.name], coefficients=tuple(coefficients)))
    return tuple(ops)


def _isa_op(operation: "Instruction", offset: int, num_params: int) -> Op:
    """An ISA gate of the copy whose columns start at ``offset``; its angle read as an affine function."""
    from qiskit.circuit import ParameterExpression

    params = operation.params
    if not any(isinstance(p, ParameterExpression) and p.parameters for p in params):
        return fixed_op(operation.name, operation.to_matrix())
    if operation.name not in PLANES or len(params) != 1:
        raise RuntimeError(f"the emulator cannot run a parameterised '{operation.name}' gate")
    expr = params[0]
    symbols = list(expr.parameters)
    columns = [s.index - offset for s in symbols]  # ParameterVector elements of the packed template
    if not all(0 <= c < num_params for c in columns):
        raise RuntimeError("an ISA gate mixes the parameters of two copies")

    def at(values: np.ndarray) -> float:
        return float(expr.bind(dict(zip(symbols, values.tolist(), strict=True))))

    constant = at(np.zeros(len(symbols)))
    slopes = np.array([at(np.eye(len(symbols))[k]) - constant for k in range(len(symbols))])
    probe = np.random.default_rng(0).uniform(-3, 3, len(symbols))
    if abs(at(probe) - constant - slopes @ probe) > 1e-9:
        raise RuntimeError(f"the angle {expr} is not affine in the parameters")
    coefficients = np.zeros(num_params)
    np.add.at(coefficients, columns, slopes)
    return Op(operation.name, plane=PLANES[operation.name], coefficients=tuple(coefficients.tolist()),
              constant=constant)


def isa_programs(circuit: "QuantumCircuit", width: int, num_params: int) -> tuple[list[tuple[Op, ...]], list[int]]:
    """Per copy (clbit w), its gates in time order and the compact qubit it runs on (read from its measure)."""
    qubit_of_copy: dict[int, int] = {}
    gates: dict[int, list] = {}
    for inst in circuit.data:
        name = inst.operation.name
        if name == "barrier":
            continue
        if len(inst.qubits) != 1:
            raise RuntimeError(f"the emulator runs one-qubit circuits; the ISA holds a {len(inst.qubits)}-qubit "
                               f"'{name}'")
        qubit = circuit.find_bit(inst.qubits[0]).index
        if name == "measure":
            qubit_of_copy[circuit.find_bit(inst.clbits[0]).index] = qubit
        else:
            gates.setdefault(qubit, []).append(inst.operation)
    if sorted(qubit_of_copy) != list(range(width)):
        raise RuntimeError("the ISA template does not measure one qubit per copy")
    programs = [tuple(_isa_op(op, w * num_params, num_params) for op in gates.get(qubit_of_copy[w], []))
                for w in range(width)]
    return programs, [qubit_of_copy[w] for w in range(width)]


def emulate_p0(programs: list[tuple[Op, ...]], sites: list[int], params: np.ndarray, noise: DeviceNoise,
               ) -> np.ndarray:
    """p̂0 of every row of ``params`` (N, P): row r runs ``programs[r % W]`` on compact qubit ``sites[r % W]``."""
    theta = torch.from_numpy(np.ascontiguousarray(params, dtype=np.float64))
    copy = torch.arange(params.shape[0]) % len(programs)
    return noisy_p0(programs, sites, theta, copy, noise).numpy()


def noisy_p0(programs: list[tuple[Op, ...]], sites: list[int], theta: torch.Tensor, copy: torch.Tensor,
             noise: DeviceNoise) -> torch.Tensor:
    """p̂0 of row r of ``theta`` (rows, P; float64) run as copy ``copy[r]``, differentiable in ``theta``.

    Copies with the same gates (all of them, normally) run as one vectorised pass with per-row noise; the only
    Python loops are over distinct programs and the gate sequence.
    """
    site_of_copy = torch.as_tensor(sites)
    groups: dict[tuple[Op, ...], list[int]] = {}
    for w, program in enumerate(programs):
        groups.setdefault(program, []).append(w)
    if len(groups) == 1:
        return _evolve(programs[0], theta, site_of_copy[copy], noise)
    p0 = torch.zeros(theta.shape[0], dtype=torch.float64)
    for program, copies in groups.items():
        rows = torch.nonzero(torch.isin(copy, torch.as_tensor(copies))).flatten()
        if rows.numel():
            p0 = p0.index_put((rows,), _evolve(program, theta[rows], site_of_copy[copy[rows]], noise))
    return p0


def _evolve(program: tuple[Op, ...], theta: torch.Tensor, site: torch.Tensor, noise: DeviceNoise) -> torch.Tensor:
    """p̂0 after ``program`` for each row of ``theta`` on compact qubit ``site`` (differentiable in ``theta``)."""
    rows = theta.shape[0]
    v = [torch.zeros(rows, dtype=torch.float64), torch.zeros(rows, dtype=torch.float64),
         torch.ones(rows, dtype=torch.float64)]
    per_row = {}
    for op in program:
        if op.rotation is not None:
            r = op.rotation
            v = [r[i][0] * v[0] + r[i][1] * v[1] + r[i][2] * v[2] for i in range(3)]
        else:
            angle = theta @ torch.tensor(op.coefficients, dtype=torch.float64) + op.constant
            cos, sin = torch.cos(angle), torch.sin(angle)
            i, j = op.plane
            v[i], v[j] = cos * v[i] - sin * v[j], sin * v[i] + cos * v[j]
        channel = noise.channel(op.gate)
        if channel is not None:
            if op.gate not in per_row:
                per_row[op.gate] = [torch.from_numpy(arr)[site] for arr in
                                    (channel.transverse, channel.longitudinal, channel.offset)]
            a, b, c = per_row[op.gate]
            v = [a * v[0], a * v[1], b * v[2] + c]
    p0 = 0.5 * (1.0 + v[2])
    flip0, flip1 = (torch.from_numpy(noise.p1_given_0)[site], torch.from_numpy(noise.p0_given_1)[site])
    return (1.0 - flip0) * p0 + flip1 * (1.0 - p0)


@cache
def _fake_programs(device: str, qubits: tuple[int, ...], template: Template
                   ) -> tuple[list[tuple[Op, ...]], list[int], DeviceNoise]:
    """Per copy, the ISA gates ``aer:<device>`` runs on ``qubits`` (the same compact target and transpilation,
    sharing its cache) and the compact qubit it sits on; and those qubits' noise. Once per (qubits, template)."""
    from qkan_orch.backends.qiskit_common import compact_target, fake_backend, isa_template

    target = compact_target(fake_backend(device).target, qubits)
    circuit = isa_template(template, len(qubits), target, key=(device, qubits))
    programs, sites = isa_programs(circuit, len(qubits), template.num_params)
    return programs, sites, ibm_noise(target, qubits)


class EmulatorBackend(Backend):
    """``emulate:dm`` or ``emulate:<IBM fake>``: exact noisy probabilities, or counts drawn from them."""

    chunkable = True

    def __init__(self, device: str) -> None:
        self.device = device
        self.name = f"emulate:{device}"
        if device != "dm":
            from qkan_orch.backends.qiskit_common import fake_backend_classes

            known = ["dm", *fake_backend_classes()]
            if device not in known:
                raise InputError("backend", f"no device '{device}' to emulate{did_you_mean(device, known)} "
                                 "(emulate:dm or emulate:fake_<device>; `qkan-orch backends --filter emulate` "
                                 "lists them)")

    def capabilities(self) -> Capabilities:
        if self.device == "dm":
            return Capabilities(
                name=self.name, kind="noisy simulator", qubits=DM_QUBITS, max_shots=MAX_SHOTS,
                noise=f"emulated braket:local_dm: depolarizing p={DEPOLARIZING} after every gate, read-out bit "
                      f"flip p={READOUT_FLIP}; exact probabilities without shots",
                native_gates=("h", "x", "z", "rz", "ry"), default_pack=1, max_pack=DM_QUBITS,
                options=("seed", "noise", "depolarizing", "readout_flip"), exact_probabilities=True,
            )
        from qkan_orch.backends.qiskit_common import fake_qubits

        qubits = fake_qubits(self.device)
        return Capabilities(
            name=self.name, kind="noisy simulator", qubits=qubits, max_shots=MAX_SHOTS,
            noise=f"emulated {self.device} calibration (as aer:{self.device}): depolarizing + T1/T2 relaxation "
                  "per gate, read-out error; exact probabilities without shots",
            native_gates=("rz", "sx", "x"), default_pack=min(4, qubits), max_pack=qubits,
            options=("seed", "noise", "qubits"), exact_probabilities=True,
        )

    def validate(self, shots: int | None, pack: Pack, options: dict[str, Any] | None
                 ) -> tuple[int | None, int, dict[str, Any]]:
        """The common checks, except that no ``shots`` is allowed (exact noisy probabilities); a ``qubits``
        option places copy w on ``qubits[w]`` and, without ``pack``, sets the width."""
        chosen = (options or {}).get("qubits")
        if pack is None and isinstance(chosen, list | tuple):
            pack = len(chosen)
        _, width, options = super().validate(1 if shots is None else shots, pack, options)
        if "qubits" in options:
            self._check_qubits(options["qubits"], width)
        if self.device == "dm":
            braket_options(options)
        return shots, width, options

    def _check_qubits(self, chosen: Any, width: int) -> None:
        count = self.capabilities().qubits
        if (not isinstance(chosen, list | tuple) or len(chosen) != width
                or any(isinstance(q, bool) or not isinstance(q, int) for q in chosen)):
            raise InputError("options.qubits", f"must be a list of {width} physical qubit numbers (one per "
                             f"packed copy), got {chosen!r}")
        if any(not 0 <= q < count for q in chosen) or len(set(chosen)) != len(chosen):
            raise InputError("options.qubits", f"must be distinct qubits in 0..{count - 1} of {self.device}, "
                             f"got {list(chosen)}")

    def submit(self, batch: ActivationBatch | Parts, shots: int | None = None, pack: Pack = None,
               options: dict[str, Any] | None = None) -> Handle:
        shots, width, options = self.validate(shots, pack, options)
        start = time.perf_counter()
        metadata: dict[str, Any] = {"pack": width, "noise": bool(options.get("noise", True))}
        p0s, zeros, executions = [], [], 0
        for k, part in enumerate(parts_of(batch)):
            if not part.num_rows:
                continue
            p0 = self.noisy_p0(part.template, part.params, width, options, metadata)
            p0s.append(p0)
            executions += -(-part.num_rows // width)
            if shots is not None:
                seed = (SeedStream.apply(options, SeedStream.PART, k) or {}).get("seed")
                zeros.append(np.random.default_rng(seed).binomial(shots, p0))
        if shots is None:
            p0 = np.concatenate(p0s) if p0s else np.zeros(0)
            se = np.zeros_like(p0)
        else:
            p0, se = binomial_p0(np.concatenate(zeros) if zeros else np.zeros(0), shots)
        metadata["seconds"] = time.perf_counter() - start
        result = BatchResult(p0=p0, p0_stderr=se, shots=shots or 0, executions=executions, metadata=metadata)
        return Handle(self.name, result=result)

    def noisy_p0(self, template: Template, params: np.ndarray, width: int, options: dict[str, Any],
                 metadata: dict[str, Any]) -> np.ndarray:
        """Exact p̂0 of every row, copy r % W on its own qubit; what was chosen goes into ``metadata``."""
        noisy = bool(options.get("noise", True))
        if self.device == "dm":
            depolarizing, flip = braket_options(options)  # (0, 0) with noise=false
            metadata.update(depolarizing=depolarizing, readout_flip=flip)
            noise = braket_noise(width, depolarizing, flip)
            return emulate_p0([template_program(template)] * width, list(range(width)), params, noise)
        from qkan_orch.backends.qiskit_common import best_qubits, fake_backend

        chosen = options.get("qubits")
        qubits = tuple(chosen) if chosen else best_qubits(fake_backend(self.device).target, width)
        programs, sites, noise = _fake_programs(self.device, qubits, template)
        metadata["physical_qubits"] = [qubits[s] for s in sites]
        return emulate_p0(programs, sites, params, noise if noisy else noiseless(width, qubits))


@dataclass(frozen=True)
class EmulatedDevice:
    """An IBM fake's noise as noise-aware training meets it (``models.noise_aware.NoisyForward``'s device).

    Activations are placed as ``aer:<device>`` places them at the width of ``qubits``: the layer's rows in
    ``compile_layer``'s order (active edges row-major, each edge's distinct inputs ascending), row r on copy
    r % W, copy w on physical qubit ``qubits[w]``; each copy runs the ISA gates ``aer:<device>`` transpiles for it
    (``_fake_programs``, shared with ``emulate:<device>``). ``noisy=False`` keeps the gates and drops the noise.
    """

    device: str
    qubits: tuple[int, ...]
    noisy: bool = True

    @property
    def setting(self) -> dict[str, Any]:
        """What a model trained through this device records (safetensors metadata, ``models.noise``)."""
        return {"device": self.device, "qubits": list(self.qubits)}

    def copies(self, layer: "QKANLayer", x: torch.Tensor) -> torch.Tensor:
        """(batch, out, in) copy each activation's circuit runs on; an edge that never runs (pw·m = 0): 0."""
        from qkan_orch.circuits.compile import compile_layer

        slots = compile_layer(layer, x).segments[0].slots
        return torch.from_numpy(np.where(slots >= 0, slots % len(self.qubits), 0))

    def p0(self, layer: "QKANLayer", angles: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
        """Noisy p̂0 of rows ``angles`` (rows, P; float64) of ``layer``'s circuit, row r as copy ``copy[r]``."""
        template = Template(layer.ansatz.name, layer.ansatz.reps)
        programs, sites, noise = _fake_programs(self.device, self.qubits, template)
        return noisy_p0(programs, sites, angles, copy, noise if self.noisy else noiseless(len(sites), self.qubits))


def emulated_device(noise: str, qubits: str | list[int] | None = None) -> EmulatedDevice:
    """The device ``--noise`` / the ``noise`` field names, on ``qubits`` ("auto", None, "0,1,…" or a list).

    "auto" takes the qubits ``aer:<device>`` takes at its default packing (the best read-out ones), so a model
    trained for them meets the same qubits when it runs there. Refused by field: an unknown device (``noise``);
    qubits not distinct, out of range or not operational (``qubits``).
    """
    from qkan_orch.backends.qiskit_common import best_qubits, fake_backend, fake_backend_classes, qubit_calibration

    known = fake_backend_classes()
    if noise not in known:
        raise InputError("noise", f"no IBM fake device '{noise}' to train for{did_you_mean(noise, known)} "
                         "(`qkan-orch backends --filter fake_` lists them)")
    fake = fake_backend(noise)
    if qubits is None or qubits == "auto":
        return EmulatedDevice(noise, best_qubits(fake.target, EmulatorBackend(noise).capabilities().default_pack))
    chosen = _qubit_list(qubits)
    table = qubit_calibration(fake.target, fake.properties())
    bad = [q for q in chosen if not 0 <= q < len(table)]
    if bad or not chosen or len(set(chosen)) != len(chosen):
        raise InputError("qubits", f"must be auto or distinct qubits in 0..{len(table) - 1} of {noise}, got {qubits}")
    down = [q for q in chosen if not table[q]["operational"]]
    if down:
        raise InputError("qubits", f"qubit(s) {down} of {noise} are not operational")
    return EmulatedDevice(noise, tuple(chosen))


def _qubit_list(qubits: str | list[int]) -> list[int]:
    if isinstance(qubits, list) and all(isinstance(q, int) and not isinstance(q, bool) for q in qubits):
        return qubits
    try:
        return [int(q) for q in str(qubits).split(",")]
    except ValueError:
        raise InputError("qubits", f"must be auto or comma-separated qubit numbers, got {qubits!r}") from None
