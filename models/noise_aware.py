"""Noise-aware evaluation: a QKAN or HQKAN whose every edge activation is read from a device's *noisy* p0.

The exact model reads edge (o, i) of sample b as act = |α| − |β| (or |α|² − |β|²) of its circuit's final state.
On a device the circuit runs on a physical qubit q with gate and read-out noise, so what is measured is

    p̂0(b, o, i) = (1 − P_q(1|0))·p0_q + P_q(0|1)·(1 − p0_q),    p0_q = (1 + z_q)/2,

z_q the Bloch vector's z after the device's gates, each followed by that qubit's noise map (the emulator's
kernel, ``backends.emulator``), and the activation is the same read-out of p̂0 the service applies to counts:

    fast:  act = √p̂0 − √(1 − p̂0),        z:  act = 2·p̂0 − 1.

``NoisyForward(model, device)`` runs the model's stages with these activations in every QKAN layer — the KAN sum,
the glue between layers and the next layer's inputs are the model's own — so the loss of its output, trained by
autograd through p̂0, moves θ (and the other weights) to where the *device's* outputs fit the target. Which qubit
runs which activation is the device's business (``Device.copies``): for ``backends.emulator.EmulatedDevice`` the
placement ``aer:<device>`` makes at inference, the layer's compiled rows on copies r % W. Sequence models are
refused (``noise``): their rounds per time step are not modelled here yet.
"""

from typing import Any, Protocol

import torch
from torch import nn

from qkan_orch.models.errors import InputError
from qkan_orch.models.layer import QKANLayer
from qkan_orch.models.network import HQKAN, QKAN, Model


class Device(Protocol):
    """Where noisy activations come from: a placement of a layer's activations, and their noisy p̂0."""

    @property
    def setting(self) -> dict[str, Any]: ...

    def copies(self, layer: QKANLayer, x: torch.Tensor) -> torch.Tensor:
        """(batch, out, in) index of the packed copy (hence physical qubit) each activation runs on."""
        ...

    def p0(self, layer: QKANLayer, angles: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
        """Noisy p̂0 (rows,) of ``layer``'s circuit at ``angles`` (rows, P; float64), row r run as ``copy[r]``."""
        ...


class NoisyForward(nn.Module):
    """``model``'s forward with every QKAN activation read from ``device``'s noisy p̂0 (differentiable)."""

    def __init__(self, model: Model, device: Device) -> None:
        super().__init__()
        if not isinstance(model, QKAN | HQKAN):
            raise InputError("noise", "noise-aware training takes qkan and hqkan models; sequence models "
                                      "(qkan-lstm, hqkan-lstm, lstm) train noise-free for now")
        self.model, self.device = model, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.model.stages():
            x = stage.combine(x, self.activations(stage, x)) if isinstance(stage, QKANLayer) else stage(x)
        return x

    def activations(self, layer: QKANLayer, x: torch.Tensor) -> torch.Tensor:
        """(batch, out, in) read-outs of the noisy p̂0: every edge of every sample is one row of one call."""
        shape = (x.shape[0], layer.out_dim, layer.in_dim)
        columns = torch.stack([c.expand(shape) for c in torch.broadcast_tensors(*layer.angle_columns(x))], dim=-1)
        copy = self.device.copies(layer, x.detach()).reshape(-1)
        p0 = self.device.p0(layer, columns.reshape(-1, columns.shape[-1]).double(), copy)
        return read_out(p0.reshape(shape), layer.fast_measure).to(x.dtype)


def read_out(p0: torch.Tensor, fast: bool) -> torch.Tensor:
    """The activation a measured p0 gives (``circuits.readout``'s transform): √p0 − √p1, or p0 − p1."""
    p0 = p0.clamp(0.0, 1.0)
    return torch.sqrt(p0) - torch.sqrt(1.0 - p0) if fast else 2.0 * p0 - 1.0
