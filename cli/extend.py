"""``qkan-orch extend``: layer extension of a model file (models.network.extend_reps), checked on probe inputs."""

import argparse
import copy
import sys
from typing import TYPE_CHECKING

from qkan_orch.models.errors import InputError

if TYPE_CHECKING:
    import torch

    from qkan_orch.models import Model

PROBES = 64  # inputs the old and new model are compared on


def extend(args: argparse.Namespace) -> int:
    from qkan_orch.cli.commands import spec_warnings
    from qkan_orch.models import extend_reps, load_model, save_model

    if not args.out.endswith(".safetensors"):
        raise InputError("out", f"{args.out}: models are saved as .safetensors")
    with spec_warnings():
        model = load_model(args.model, args.spec)
    longer = extend_reps(model, args.reps)
    difference = _max_difference(model, longer)
    save_model(longer, args.out)
    print(f"extended {model.spec.kind} to {args.reps} re-uploads: max |difference| of outputs {difference:.2e} on "
          f"{PROBES} probe inputs in [-1, 1] → {args.out}", file=sys.stderr)
    return 0


def _max_difference(old: "Model", new: "Model") -> float:
    """Largest |old(x) − new(x)| in float64 on seeded inputs of the models' shape (windows for a sequence model)."""
    import torch

    from qkan_orch.models import SequenceSpec

    spec = old.spec
    shape = (PROBES, spec.window, spec.in_dim) if isinstance(spec, SequenceSpec) else (PROBES, spec.in_dim)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        return float((_float64(old)(x) - _float64(new)(x)).abs().max())


def _float64(model: "Model") -> "torch.nn.Module":
    return copy.deepcopy(model).double().eval()


def add_extend(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("extend", help="layer extension: more re-uploads per QKAN edge, the same function")
    e.add_argument("--model", required=True, help="our .safetensors, or a qkan .pt state_dict with --spec")
    e.add_argument("--spec", help="spec JSON (required for a .pt: the kwargs of its QKAN(...))")
    e.add_argument("--reps", type=int, required=True, help="re-uploads of the new model (more than the model has)")
    e.add_argument("--out", required=True, help="where to save the new model (.safetensors)")
    e.set_defaults(handler=extend)
