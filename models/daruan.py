"""Vectorised state-vector simulation of one DARUAN edge circuit in torch.

Used twice with the same code: by the model's forward pass (angles broadcast
over (batch, out, in), autograd on) and by the ``exact`` backend (angles are
the columns of a compiled parameter matrix). Only |α| and |β| are ever read,
so every RZ is applied as a relative phase on β (global phase dropped) and
ansätze without RZ never leave real arithmetic.
"""

import math
from collections.abc import Sequence

import torch

from qkan_orch.models.ansatz import Ansatz

_SQRT_HALF = math.sqrt(0.5)


def final_amplitudes(
    ansatz: Ansatz, columns: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(α, β) after the edge circuit; ``columns[k]`` is the angle of column k.

    Columns broadcast against each other. Consecutive RZ gates are fused into
    one phase (RZ(a)·RZ(b) = RZ(a+b)), which pz_encoding has at every layer.
    """
    a: torch.Tensor | float = 1.0
    b: torch.Tensor | float = 0.0
    gates = ansatz.gates
    k = 0
    while k < len(gates):
        gate = gates[k]
        if gate.name == "rz":
            angle = columns[gate.column]  # type: ignore[index]
            while k + 1 < len(gates) and gates[k + 1].name == "rz":
                k += 1
                angle = angle + columns[gates[k].column]  # type: ignore[index]
            b = b * torch.polar(torch.ones_like(angle), angle)
        elif gate.name == "ry":
            half = columns[gate.column] * 0.5  # type: ignore[index]
            c, s = torch.cos(half), torch.sin(half)
            a, b = c * a - s * b, s * a + c * b
        elif gate.name == "h":
            a, b = (a + b) * _SQRT_HALF, (a - b) * _SQRT_HALF
        elif gate.name == "x":
            a, b = b, a
        elif gate.name == "z":
            b = -b
        else:  # pragma: no cover - Ansatz only emits the gates above
            raise ValueError(f"unknown gate {gate.name}")
        k += 1
    return torch.as_tensor(a), torch.as_tensor(b)


def measure(alpha: torch.Tensor, beta: torch.Tensor, fast: bool) -> torch.Tensor:
    """The qkan read-out: |α|−|β| when ``fast`` (its default), else ⟨Z⟩=|α|²−|β|²."""
    ma, mb = alpha.abs(), beta.abs()
    return ma - mb if fast else ma.square() - mb.square()
