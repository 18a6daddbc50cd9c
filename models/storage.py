"""Model files: safetensors with the spec in its metadata, or qkan ``.pt`` + kwargs JSON.

Nothing here unpickles user data: safetensors holds raw tensors, and a ``.pt``
state_dict is read with ``torch.load(weights_only=True)``, which only
reconstructs tensors and plain containers and refuses everything else.
"""

import json
import os
import pickle
import tempfile
import warnings

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from models.errors import InputError
from models.network import Model, build_model
from models.spec import ModelSpec, load_spec_file, parse_spec, spec_to_json

FORMAT = "qkan-orchestrator/1"


def save_model(model: Model, path: str) -> None:
    """Write ``path`` atomically: tensors plus the spec JSON in the metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "spec": spec_to_json(model.spec)}
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_model(path: str, spec_path: str | None = None) -> Model:
    """Load our safetensors file, or a qkan ``.pt`` state_dict (then ``spec_path`` is required)."""
    spec = load_spec_file(spec_path) if spec_path else None
    kind = _sniff(path)
    if kind == "safetensors":
        file_spec, state = _read_safetensors(path)
        spec = spec or file_spec
        if spec is None:
            raise InputError("spec", f"{path} carries no spec; pass the model's spec JSON")
    else:
        if spec is None:
            raise InputError("spec", "a .pt state_dict needs the JSON of the kwargs its QKAN(...) was built with")
        state = _read_torch_state_dict(path)
    return model_from_state(spec, state, source=path)


def model_from_state(spec: ModelSpec, state: dict[str, torch.Tensor], source: str = "model") -> Model:
    """Build the model of ``spec`` and load ``state`` into it, checking every key and shape."""
    model = build_model(spec)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise InputError("model", f"{source} lacks parameter '{missing[0]}' required by the spec")
    if unexpected:
        raise InputError("model", f"{source} has parameter '{unexpected[0]}' that the spec does not define")
    loaded = {}
    for name, want in expected.items():
        got = state[name]
        if not torch.is_floating_point(got):
            raise InputError("model", f"parameter '{name}' is not a floating-point tensor")
        if got.shape != want.shape:
            if got.numel() != want.numel():  # qkan p_dim=2 stores the same values flattened
                raise InputError(
                    "model",
                    f"parameter '{name}' has shape {tuple(got.shape)}, the spec needs {tuple(want.shape)}",
                )
            got = got.reshape(want.shape)
        if not torch.isfinite(got).all():
            raise InputError("model", f"parameter '{name}' contains NaN or infinity")
        loaded[name] = got.to(want.dtype)
    model.load_state_dict(loaded, strict=True)
    return model


def _sniff(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except FileNotFoundError:
        raise InputError("model", f"file not found: {path}") from None
    except IsADirectoryError:
        raise InputError("model", f"{path} is a directory") from None
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK") or head[:1] == b"\x80":
        return "torch"
    raise InputError("model", f"{path} is neither a safetensors file nor a torch state_dict")


def _read_safetensors(path: str) -> tuple[ModelSpec | None, dict[str, torch.Tensor]]:
    try:
        with safe_open(path, framework="pt") as fh:
            metadata = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError("model", f"{path} is not a valid safetensors file ({exc})") from None
    spec_json = metadata.get("spec")
    if spec_json is None:
        return None, state
    try:
        return parse_spec(json.loads(spec_json), "model.spec"), state
    except json.JSONDecodeError:
        raise InputError("model", f"{path} has a corrupt spec in its metadata") from None


def _read_torch_state_dict(path: str) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # torch warns about the pickle it is refusing; we say it once
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            "model", f"{path} holds objects other than tensors; only a plain state_dict is accepted"
        ) from None
    except Exception as exc:  # a corrupt archive fails in many ways; all mean "unreadable"
        raise InputError("model", f"{path} is not a readable torch state_dict ({exc})") from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise InputError("model", f"{path} is not a state_dict (a mapping of names to tensors)")
    return obj
