"""Built-in target functions for ``qkan-orch train`` and the demo.

Each is defined on [-1, 1]^d with outputs inside [-1, 1] (a narrow QKAN sums
a handful of bounded activations, so targets must fit that range).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from qkan_orch.models.errors import InputError


@dataclass(frozen=True)
class TargetFunction:
    name: str
    in_dim: int
    formula: str
    fn: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x).reshape(-1, 1)

    def grid(self, per_axis: int) -> torch.Tensor:
        """A regular grid on [-1, 1]^d, float64, shape (per_axis**d, d)."""
        axis = torch.linspace(-1.0, 1.0, per_axis, dtype=torch.float64)
        mesh = torch.meshgrid(*[axis] * self.in_dim, indexing="ij")
        return torch.stack([m.reshape(-1) for m in mesh], dim=1)

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(n, self.in_dim, generator=gen, dtype=torch.float64) * 2 - 1


FUNCTIONS = {
    f.name: f
    for f in (
        TargetFunction("sin", 1, "sin(π x)", lambda x: torch.sin(math.pi * x[:, 0])),
        TargetFunction(
            "bessel", 1, "J0(4x)", lambda x: torch.special.bessel_j0(4.0 * x[:, 0])
        ),
        TargetFunction(
            "sin_cos", 2, "(sin(π x₁) + cos(π x₂)) / 2",
            lambda x: 0.5 * (torch.sin(math.pi * x[:, 0]) + torch.cos(math.pi * x[:, 1])),
        ),
        TargetFunction(
            "product", 2, "x₁·x₂", lambda x: x[:, 0] * x[:, 1]
        ),
        TargetFunction(
            "exp_sin", 2, "exp(sin(π x₁) + x₂²) / 8",
            lambda x: torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2) / 8,
        ),
    )
}


def get_function(name: str) -> TargetFunction:
    if name not in FUNCTIONS:
        raise InputError("function", f"'{name}' is not built in (choose from {', '.join(FUNCTIONS)})")
    return FUNCTIONS[name]
