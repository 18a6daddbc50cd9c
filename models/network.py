"""Whole models: multi-layer QKAN and HQKAN, built from a spec.

Both expose ``stages()``: the ordered list of modules a forward pass applies.
QKAN layers among them are what the compiler turns into quantum rounds;
everything else is classical glue that runs in torch between rounds.
"""

import torch
import torch.nn.functional as F
from torch import nn

from qkan_orch.models.errors import InputError
from qkan_orch.models.layer import QKANLayer, qkan_layer
from qkan_orch.models.sequence import SequenceModel
from qkan_orch.models.spec import HQKANSpec, ModelSpec, QKANSpec, SequenceSpec


class NormalizeOutput(nn.Module):
    """qkan's ``norm_out``: L_p normalisation of the output rows."""

    def __init__(self, p: int) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=self.p, dim=1)


class StagedModel(nn.Module):
    """A model that is its ``stages()`` applied in order; the spec gives its widths."""

    spec: ModelSpec

    @property
    def in_dim(self) -> int:
        return self.spec.in_dim

    @property
    def out_dim(self) -> int:
        return self.spec.out_dim

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return x


class QKAN(StagedModel):
    """Stacked QKAN layers; ``layers.<k>.*`` keys match ``qkan.QKAN``."""

    def __init__(self, spec: QKANSpec) -> None:
        super().__init__()
        self.spec = spec
        width = spec.width
        self.layers = nn.ModuleList(qkan_layer(spec, n_in, n_out) for n_in, n_out in spec.quantum_layers)
        if spec.is_map:  # qkan appends Linear · SiLU · Linear into the same list
            self.layers.extend(
                [nn.Linear(width[-2], spec.hidden), nn.SiLU(), nn.Linear(spec.hidden, width[-1])]
            )
        self.tail = NormalizeOutput(spec.norm_out) if spec.norm_out else None

    def stages(self) -> list[nn.Module]:
        return [*self.layers, *([self.tail] if self.tail is not None else [])]


class HQKAN(StagedModel):
    """Linear(d_in → k) · QKAN(k … k') · Linear(k' → d_out): a drop-in MLP replacement."""

    def __init__(self, spec: HQKANSpec) -> None:
        super().__init__()
        self.spec = spec
        self.down = nn.Linear(spec.in_dim, spec.qkan.in_dim)
        self.qkan = QKAN(spec.qkan)
        self.up = nn.Linear(spec.qkan.out_dim, spec.out_dim)

    def stages(self) -> list[nn.Module]:
        return [self.down, *self.qkan.stages(), self.up]


Model = QKAN | HQKAN | SequenceModel


def build_model(spec: ModelSpec, seed: int | None = None) -> Model:
    """A freshly initialised model; ``seed`` makes the initialisation reproducible."""
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        if isinstance(spec, SequenceSpec):
            return SequenceModel(spec)
        return QKAN(spec) if isinstance(spec, QKANSpec) else HQKAN(spec)


def qkan_layers(model: Model) -> list[QKANLayer]:
    return [m for m in model.modules() if isinstance(m, QKANLayer)]


def extend_reps(model: Model, new_reps: int) -> Model:
    """Layer extension: a copy with ``new_reps`` re-uploads computing the same function.

    θ of the old layers and the final rotation are copied, new layers get θ = 0
    and unit pre-activations. For pz/rpz the added gates are then RZ rotations
    only, which commute with the Z read-out, so outputs are unchanged at step 0.
    Every QKAN layer of the model is extended: an HQKAN's inner QKAN, every gate
    of a QKAN-LSTM or HQKAN-LSTM. The copy is built in the model's dtype before the
    state is loaded, so nothing is rounded on the way.
    """
    check_extension(model.spec, new_reps)
    dtype = next(model.parameters()).dtype
    new = build_model(model.spec.with_reps(new_reps)).to(dtype)
    new.load_state_dict(_extended_state(model, new), strict=True)
    return new


def check_extension(spec: ModelSpec, new_reps: int) -> None:
    """Refuse, by field, an extension that cannot preserve the function: before any model is loaded or built."""
    options = _qkan_options(spec)
    if options is None:
        raise InputError("model", "a classical lstm model has no QKAN layer to extend; layer extension adds "
                                  "re-uploads to the QKAN layers of qkan, hqkan, qkan-lstm and hqkan-lstm models")
    if new_reps <= options.reps:
        raise InputError("reps", f"new reps ({new_reps}) must exceed the current {options.reps}")
    if options.ansatz == "real":
        raise InputError("ansatz", "layer extension is not function-preserving for the 'real' ansatz")


def _qkan_options(spec: ModelSpec) -> QKANSpec | None:
    """The options every QKAN layer of a ``spec`` model shares (reps, ansatz), or None for a classical LSTM."""
    if isinstance(spec, SequenceSpec):
        return None if spec.kind == "lstm" else spec.gate
    return spec.qkan if isinstance(spec, HQKANSpec) else spec


def _extended_state(model: Model, new: Model) -> dict[str, torch.Tensor]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    target = new.state_dict()
    for name, tensor in target.items():
        old = state[name]
        if old.shape == tensor.shape:
            continue
        grown = torch.zeros_like(tensor, dtype=old.dtype)
        if name.endswith("theta"):
            reps = old.shape[2] - 1
            grown[:, :, :reps] = old[:, :, :reps]
            grown[:, :, reps] = old[:, :, reps]  # old final rotation right after the old layers
        elif name.endswith("preacts_weight"):
            grown.fill_(1.0)
            grown[..., : old.shape[-1]] = old
        else:  # preacts_bias
            grown[..., : old.shape[-1]] = old
        state[name] = grown
    return state
