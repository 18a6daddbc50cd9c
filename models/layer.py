"""One QKAN layer: a DARUAN circuit on every (out, in) edge plus the KAN sum.

Parameter names, shapes and ``requires_grad`` flags equal those of
``qkan.QKANLayer`` (natural 4-D layout), so a ``qkan`` state_dict loads as is.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qkan_orch.models.ansatz import Ansatz, build_ansatz
from qkan_orch.models.daruan import final_amplitudes, measure
from qkan_orch.models.spec import QKANSpec

_ACTIVATIONS = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": lambda: nn.GELU(approximate="none"),
    "gelu_exact": lambda: nn.GELU(approximate="none"),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def make_activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


class QKANLayer(nn.Module):
    """y[b,o] = Σ_i (act[b,o,i] + pb[o,i])·pw[o,i]·m[o,i] + Σ_i bw[o,i]·m[o,i]·φ(x[b,i])."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        reps: int = 3,
        ansatz: str = "pz_encoding",
        preact_trainable: bool = False,
        postact_weight_trainable: bool = False,
        postact_bias_trainable: bool = False,
        ba_trainable: bool = True,
        base_activation: str = "silu",
        fast_measure: bool = True,
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.reps = in_dim, out_dim, reps
        self.ansatz: Ansatz = build_ansatz(ansatz, reps)
        self.preact_trainable = preact_trainable
        self.fast_measure = fast_measure
        self.base_activation = make_activation(base_activation)
        oi = (out_dim, in_dim)
        self.theta = nn.Parameter(torch.empty(*oi, *self.ansatz.theta_shape))
        nn.init.xavier_normal_(self.theta.data)
        self.preacts_weight = nn.Parameter(torch.ones(*oi, reps), requires_grad=preact_trainable)
        self.preacts_bias = nn.Parameter(
            torch.zeros(*oi, reps), requires_grad=self.encodes_affinely
        )
        self.base_weight = nn.Parameter(
            torch.full(oi, 0.5 if ba_trainable else 0.0), requires_grad=ba_trainable
        )
        self.postact_weights = nn.Parameter(torch.ones(oi), requires_grad=postact_weight_trainable)
        self.postact_bias = nn.Parameter(torch.zeros(oi), requires_grad=postact_bias_trainable)
        self.mask = nn.Parameter(torch.ones(oi), requires_grad=False)

    @property
    def encodes_affinely(self) -> bool:
        """Whether e_l = w·x + b (trainable pre-activations, and always for rpz)."""
        return self.preact_trainable or self.ansatz.name == "rpz_encoding"

    def edge_weights(self) -> torch.Tensor:
        """pw·m per edge: an edge whose weight is 0 never needs its circuit run."""
        return self.postact_weights * self.mask

    def angle_columns(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Angles of every ansatz column, broadcastable to (batch, out, in)."""
        columns: list[torch.Tensor] = [None] * self.ansatz.num_params  # type: ignore[list-item]
        for (row, k), column in np.ndenumerate(self.ansatz.theta_columns):
            columns[column] = self.theta[:, :, row, k].unsqueeze(0)
        xb = x.unsqueeze(1)  # (B, 1, I)
        for layer, column in enumerate(self.ansatz.encoding_columns.tolist()):
            if self.encodes_affinely:
                columns[column] = xb * self.preacts_weight[:, :, layer] + self.preacts_bias[:, :, layer]
            else:
                columns[column] = xb
        return columns

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Per-edge circuit read-out, shape (batch, out, in)."""
        alpha, beta = final_amplitudes(self.ansatz, self.angle_columns(x))
        act = measure(alpha, beta, self.fast_measure)
        return act.expand(x.shape[0], self.out_dim, self.in_dim)

    def combine(self, x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """The KAN sum over edges; hardware activations enter the model here too."""
        main = ((act + self.postact_bias) * self.edge_weights()).sum(dim=2)
        base = F.linear(self.base_activation(x), self.base_weight * self.mask)
        return main + base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(x, self.activations(x))

    def extra_repr(self) -> str:
        return f"{self.in_dim}→{self.out_dim}, ansatz={self.ansatz.name}, reps={self.reps}"


def qkan_layer(spec: QKANSpec, n_in: int, n_out: int) -> QKANLayer:
    """A QKAN layer with ``spec``'s options (ansatz, reps, read-out, what trains)."""
    return QKANLayer(
        n_in, n_out, reps=spec.reps, ansatz=spec.ansatz, preact_trainable=spec.preact_trainable,
        postact_weight_trainable=spec.postact_weight_trainable, postact_bias_trainable=spec.postact_bias_trainable,
        ba_trainable=spec.ba_trainable, base_activation=spec.base_activation, fast_measure=spec.fast_measure,
    )
