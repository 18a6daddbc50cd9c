"""DARUAN ansätze as gate sequences over a flat parameter row.

An ansatz is written once, as the time-ordered list of gates of one edge
circuit. Every consumer — the torch simulator, the compiler, the Qiskit,
Braket and PennyLane lowerings — reads this list, so the circuit cannot drift
between them.

Column order (documented contract of ``ActivationBatch.params``): column k is
the angle of the k-th rotation gate in time order. Hence

* ``pz_encoding``:  ``[θ₀₀, θ₀₁, e₀, θ₁₀, θ₁₁, e₁, …, θ_L0, θ_L1]``  (P = 3·reps + 2)
* ``rpz_encoding``: ``[θ₀, e₀, θ₁, e₁, …, θ_L]``                    (P = 2·reps + 1)
* ``real``:         ``[θ₀, e₀, …, θ_{reps-1}, e_{reps-1}]``          (P = 2·reps)

where θ are the trained angles of the edge and e_l its data encoding
(x, or w_l·x + b_l with trainable pre-activations).
"""

from dataclasses import dataclass
from functools import cache

import numpy as np

from qkan_orch.models.errors import InputError

ANSATZ_ALIASES = {
    "pz_encoding": "pz_encoding",
    "pz": "pz_encoding",
    "rpz_encoding": "rpz_encoding",
    "rpz": "rpz_encoding",
    "real": "real",
}

FIXED_GATES = ("h", "x", "z")
ROTATION_GATES = ("rz", "ry")


@dataclass(frozen=True)
class Gate:
    """One gate of the edge circuit; ``column`` indexes the parameter row."""

    name: str
    column: int | None = None


@dataclass(frozen=True)
class Ansatz:
    """The edge circuit of one (ansatz, reps) pair and where θ and e live in a row."""

    name: str
    reps: int
    gates: tuple[Gate, ...]
    theta_columns: np.ndarray  # shape = trailing theta shape (R', K): column of θ[l, k]
    encoding_columns: np.ndarray  # shape (reps,): column of e_l

    @property
    def num_params(self) -> int:
        return sum(g.column is not None for g in self.gates)

    @property
    def theta_shape(self) -> tuple[int, int]:
        return self.theta_columns.shape  # type: ignore[return-value]


def canonical_ansatz(name: str) -> str:
    """Map user spellings to the canonical name, refusing what we cannot run."""
    if name not in ANSATZ_ALIASES:
        raise InputError(
            "ansatz",
            f"'{name}' is not supported (supported: pz_encoding, rpz_encoding, real; "
            "px_encoding and mix need gates outside the DARUAN template)",
        )
    return ANSATZ_ALIASES[name]


@cache
def build_ansatz(name: str, reps: int) -> Ansatz:
    """Build (and memoise) the gate list of ``name`` with ``reps`` data re-uploads."""
    name = canonical_ansatz(name)
    if reps < 1:
        raise InputError("reps", f"must be ≥ 1, got {reps}")
    gates: list[Gate] = [Gate("h")]
    column = 0

    def rot(kind: str) -> int:
        nonlocal column
        gates.append(Gate(kind, column))
        column += 1
        return column - 1

    thetas: list[list[int]] = []
    encodings: list[int] = []
    for _ in range(reps):
        if name == "pz_encoding":
            thetas.append([rot("rz"), rot("ry")])
            encodings.append(rot("rz"))
        elif name == "rpz_encoding":
            thetas.append([rot("ry")])
            encodings.append(rot("rz"))
        else:  # real: X RY(θ) Z RY(e)
            gates.append(Gate("x"))
            thetas.append([rot("ry")])
            gates.append(Gate("z"))
            encodings.append(rot("ry"))
    if name == "pz_encoding":
        thetas.append([rot("rz"), rot("ry")])
    elif name == "rpz_encoding":
        thetas.append([rot("ry")])
    return Ansatz(
        name=name,
        reps=reps,
        gates=tuple(gates),
        theta_columns=np.array(thetas, dtype=np.int64),
        encoding_columns=np.array(encodings, dtype=np.int64),
    )
