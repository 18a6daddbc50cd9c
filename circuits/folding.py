"""The gate sequence a lowering emits: the edge circuit, folded for zero-noise extrapolation.

Unitary folding at an odd scale factor λ = 2k + 1 replaces every gate G by
G (G†G)^k: the same unitary, λ times the gates, hence (for gate noise that
grows with the number of gates) λ times the noise. The fold is part of the
template, so every lowering — Qiskit, Braket, PennyLane — emits the folded
sequence from this one list, and a *fence* (a barrier) after every gate of it
keeps compilers from merging or cancelling G against G†. The scale-1 circuit
of a ZNE round is fenced too (``fenced``): unfenced, a transpiler merges
neighbouring gates (X·RY·Z of ``real`` into fewer √X), and scale 3 would then
run more than three times its gates. So on the circuit that actually runs,
the executed gates at λ are λ times those at scale 1 (tested per lowering by
counting them).

The inverse of a rotation R(a) is R(−a); H, X and Z are their own inverses.
Read-out calibration circuits (``prepare_0``, ``prepare_1``: identity or X,
then measure) are templates too, so they bind and pack like any other; they
are never folded — read-out error does not depend on the gates before it.
"""

from dataclasses import dataclass
from functools import cache

from qkan_orch.models.ansatz import build_ansatz

PREPARATIONS = {"prepare_0": "id", "prepare_1": "x"}  # read-out calibration: the gate that prepares |b⟩
MAX_FOLD = 13  # scale factors are odd integers up to this (7 of them at most: 1, 3, …, 13)


@dataclass(frozen=True)
class Step:
    """One gate as emitted: ``sign`` −1 negates the angle of column ``column`` (G† of a rotation)."""

    name: str
    column: int | None = None
    sign: int = 1
    fence: bool = False  # a barrier after it on its qubit


@cache
def folded_steps(ansatz: str, reps: int, fold: int, fenced: bool = False) -> tuple[Step, ...]:
    """The gates of one copy of the edge circuit at scale factor ``fold``, in time order; fenced when folded
    or asked to be."""
    if ansatz in PREPARATIONS:
        return (Step(PREPARATIONS[ansatz]),)
    if fold < 1 or fold % 2 == 0 or fold > MAX_FOLD:
        raise ValueError(f"a fold must be an odd integer in 1..{MAX_FOLD}, got {fold}")
    steps: list[Step] = []
    for gate in build_ansatz(ansatz, reps).gates:
        for k in range(fold):
            sign = -1 if k % 2 else 1  # G, G†, G, G†, …, G
            steps.append(Step(gate.name, gate.column, sign if gate.column is not None else 1,
                              fence=fenced or fold > 1))
    return tuple(steps)
