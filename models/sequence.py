"""Sequence models of the QKAN-LSTM paper: QKAN-LSTM, HQKAN-LSTM, and torch's LSTM as the classical baseline.

An LSTM cell maps u = [x_t, h_{t−1}] through four gate maps and combines them
(docs/SEQUENCE_MODELS.md has the equations and the choices made where the
paper is silent):

    i = σ(G_i(u))   f = σ(G_f(u))   g = tanh(G_g(u))   o = σ(G_o(u))
    c_t = f ⊙ c_{t−1} + i ⊙ g        h_t = o ⊙ tanh(c_t)

In QKAN-LSTM each G is one QKAN layer (DARUAN edges) in place of the Linear
map; in HQKAN-LSTM it is Linear → one latent QKAN layer → Linear. Only the
gates' QKAN layers are quantum: ``circuits.sequence_plan`` runs every gate of
a time step as one round, the rest in torch between rounds, with exactly the
modules defined here.
"""

import torch
from torch import nn

from qkan_orch.models.errors import InputError
from qkan_orch.models.layer import QKANLayer, qkan_layer
from qkan_orch.models.spec import SequenceSpec

GATES = ("i", "f", "g", "o")  # torch.nn.LSTM's order: input, forget, cell candidate, output


class GateMap(nn.Module):
    """u → a gate's pre-activation: ``up(qkan(down(u)))``, ``down``/``up`` Linear maps or the identity."""

    def __init__(self, spec: SequenceSpec, layer: int) -> None:
        super().__init__()
        hqkan = spec.kind == "hqkan-lstm"
        self.down = nn.Linear(spec.cell_inputs(layer), spec.latent) if hqkan else nn.Identity()
        self.qkan: QKANLayer = qkan_layer(spec.gate, *spec.gate_width(layer))
        self.up = nn.Linear(spec.latent, spec.hidden) if hqkan else nn.Identity()

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.up(self.qkan(self.down(u)))


class QKANLSTMCell(nn.Module):
    def __init__(self, spec: SequenceSpec, layer: int) -> None:
        super().__init__()
        self.gates = nn.ModuleList(GateMap(spec, layer) for _ in GATES)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.cat([x, h], dim=1)
        pre = [gate(u) for gate in self.gates]
        return combine_gates(*pre, c)


def combine_gates(zi: torch.Tensor, zf: torch.Tensor, zg: torch.Tensor, zo: torch.Tensor,
                  c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The LSTM update from the four gate pre-activations: (h_t, c_t)."""
    c_next = torch.sigmoid(zf) * c + torch.sigmoid(zi) * torch.tanh(zg)
    return torch.sigmoid(zo) * torch.tanh(c_next), c_next


class SequenceModel(nn.Module):
    """Stacked LSTM layers over (N, T, F) windows and a Linear head on h_T (``last``) or on every h_t
    (``sequence``, outputs flattened to T·out_dim per sample)."""

    def __init__(self, spec: SequenceSpec) -> None:
        super().__init__()
        self.spec = spec
        if spec.kind == "lstm":
            self.lstm = nn.LSTM(spec.in_dim, spec.hidden, num_layers=spec.layers, batch_first=True)
        else:
            self.cells = nn.ModuleList(QKANLSTMCell(spec, k) for k in range(spec.layers))
        self.head = nn.Linear(spec.hidden, spec.out_dim)

    @property
    def in_dim(self) -> int:
        return self.spec.in_dim

    @property
    def out_dim(self) -> int:
        return self.spec.total_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = sequence_inputs(x, self.spec)
        if self.spec.kind == "lstm":
            hs = self.lstm(x)[0]
        else:
            n, steps = x.shape[:2]
            h = [x.new_zeros(n, self.spec.hidden) for _ in self.cells]
            c = [x.new_zeros(n, self.spec.hidden) for _ in self.cells]
            top = []
            for t in range(steps):
                below = x[:, t]
                for k, cell in enumerate(self.cells):
                    h[k], c[k] = cell(below, h[k], c[k])
                    below = h[k]
                top.append(below)
            hs = torch.stack(top, dim=1)
        if self.spec.head == "last":
            return self.head(hs[:, -1])
        return self.head(hs).reshape(x.shape[0], -1)


def sequence_inputs(x: torch.Tensor, spec: SequenceSpec) -> torch.Tensor:
    """(N, T, F) windows, or an InputError naming what is wrong; (N, T) is taken as F = 1."""
    if x.ndim == 2 and spec.in_dim == 1:
        x = x[:, :, None]
    if x.ndim != 3:
        raise InputError("inputs", f"must be windows of shape (samples, {spec.window}, {spec.in_dim}), "
                                   f"got {x.ndim}-D")
    if x.shape[1] != spec.window:
        raise InputError("inputs", f"windows of {x.shape[1]} steps; the model takes {spec.window}")
    if x.shape[2] != spec.in_dim:
        raise InputError("inputs", f"{x.shape[2]} features per step; the model takes {spec.in_dim}")
    return x
