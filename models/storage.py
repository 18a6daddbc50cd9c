"""Model files: safetensors with the spec in its metadata, or qkan ``.pt`` + kwargs JSON.

Nothing here unpickles user data: safetensors holds raw tensors, and a ``.pt``
state_dict is read with ``torch.load(weights_only=True)``, which only
reconstructs tensors and plain containers and refuses everything else.
Everything works on bytes, so uploads and files share one code path.

A noise-aware model (``models.noise_aware``) records the device it was trained for, ``{"device": …, "qubits":
[…]}``, as the ``noise`` metadata entry; ``model_noise`` reads it back from the header alone.
"""

import io
import json
import math
import os
import pickle
import tempfile
import warnings
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from qkan_orch.models.errors import InputError
from qkan_orch.models.network import Model, build_model
from qkan_orch.models.spec import ModelSpec, SpecLimits, load_spec_file, parse_spec, spec_to_json

FORMAT = "qkan-orchestrator/1"


def model_to_bytes(model: Model, noise: dict[str, Any] | None = None) -> bytes:
    """Safetensors bytes of the state_dict with the spec JSON (and the noise it was trained for) in the metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    metadata = {"format": FORMAT, "spec": spec_to_json(model.spec)}
    if noise is not None:
        metadata["noise"] = json.dumps(noise, sort_keys=True)
    return save_tensors(tensors, metadata=metadata)


def model_noise(data: bytes, source: str = "model") -> dict[str, Any] | None:
    """The ``{"device", "qubits"}`` a model's bytes say it was trained for; None for noise-free or a .pt."""
    if _sniff(data, source) != "safetensors":
        return None
    try:
        text = (_safetensors_header(data).get("__metadata__") or {}).get("noise")
        noise = None if text is None else json.loads(text)
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
        raise InputError("model", f"{source} is not a valid safetensors file") from None
    if noise is not None and not (
            isinstance(noise, dict) and set(noise) == {"device", "qubits"} and isinstance(noise["device"], str)
            and isinstance(noise["qubits"], list) and all(type(q) is int for q in noise["qubits"])):
        raise InputError("model", f"{source} has a corrupt noise entry in its metadata")
    return noise


def model_from_bytes(data: bytes, spec: ModelSpec | None = None, source: str = "model",
                     limits: SpecLimits | None = None) -> Model:
    """Our safetensors bytes (spec inside, or ``spec``), or a qkan .pt state_dict with ``spec``.

    ``limits`` are checked on the spec and on the safetensors header's shapes before any tensor is read or built.
    """
    kind = _sniff(data, source)
    if kind == "safetensors":
        file_spec, numbers = _safetensors_spec(data, source)
        where = "spec" if spec is not None else "model.spec"
        spec = spec or file_spec
        if spec is None:
            raise InputError("spec", f"{source} carries no spec; pass the model's spec JSON")
        if limits is not None:
            limits.check(spec, where)
            if numbers > limits.numbers:
                raise InputError("model", f"{source} holds {numbers:,} numbers; "
                                          f"this service's limit is {limits.numbers:,}")
        state = _read_safetensors(data, source)
    else:
        if spec is None:
            raise InputError("spec", "a .pt state_dict needs the JSON of the kwargs its QKAN(...) was built with")
        if limits is not None:
            limits.check(spec)
        state = _read_torch_state_dict(data, source)
    return model_from_state(spec, state, source=source)


def save_model(model: Model, path: str, noise: dict[str, Any] | None = None) -> None:
    """Write ``path`` atomically (a temporary file renamed into place); ``noise``: see ``model_to_bytes``."""
    data = model_to_bytes(model, noise)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_model(path: str, spec_path: str | None = None) -> Model:
    """Load a model file; ``spec_path`` is required for a qkan ``.pt``."""
    spec = load_spec_file(spec_path) if spec_path else None
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise InputError("model", f"file not found: {path}") from None
    except IsADirectoryError:
        raise InputError("model", f"{path} is a directory") from None
    return model_from_bytes(data, spec, source=path)


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


def _sniff(data: bytes, source: str) -> str:
    if len(data) >= 9 and data[8:9] == b"{":
        return "safetensors"
    if data.startswith(b"PK") or data[:1] == b"\x80":
        return "torch"
    raise InputError("model", f"{source} is neither a safetensors file nor a torch state_dict")


def _safetensors_spec(data: bytes, source: str) -> tuple[ModelSpec | None, int]:
    """The spec in the metadata and the count of numbers the tensors hold, from the header alone."""
    try:
        header = _safetensors_header(data)
        numbers = sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
        spec_json = (header.get("__metadata__") or {}).get("spec")
    except (ValueError, TypeError, KeyError, AttributeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError("model", f"{source} is not a valid safetensors file ({exc})") from None
    if spec_json is None:
        return None, numbers
    try:
        return parse_spec(json.loads(spec_json), "model.spec"), numbers
    except json.JSONDecodeError:
        raise InputError("model", f"{source} has a corrupt spec in its metadata") from None


def _read_safetensors(data: bytes, source: str) -> dict[str, torch.Tensor]:
    try:
        return load_tensors(data)
    except (SafetensorError, ValueError) as exc:
        raise InputError("model", f"{source} is not a valid safetensors file ({exc})") from None


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The string metadata of safetensors bytes, read from the header without loading a tensor."""
    return _safetensors_header(data).get("__metadata__") or {}


def _safetensors_header(data: bytes) -> dict[str, Any]:
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise ValueError(f"its header claims {header_len} bytes of {len(data) - 8}")
    header = json.loads(data[8 : 8 + header_len])
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return header


def _read_torch_state_dict(data: bytes, source: str) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # torch warns about the pickle it is refusing; we say it once
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(
            "model", f"{source} holds objects other than tensors; only a plain state_dict is accepted"
        ) from None
    except Exception as exc:  # a corrupt archive fails in many ways; all mean "unreadable"
        raise InputError("model", f"{source} is not a readable torch state_dict ({exc})") from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise InputError("model", f"{source} is not a state_dict (a mapping of names to tensors)")
    return obj
