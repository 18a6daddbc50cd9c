"""Torch models of QKAN networks: the classical simulator that shares hardware's parameters.

The names below load on first use (PEP 562), so importing a light submodule such as
``qkan_orch.models.errors`` does not import torch (the CLI's service commands rely on it).
"""

import importlib
from typing import TYPE_CHECKING, Any

_SOURCES = {
    "InputError": "errors", "QKANLayer": "layer",
    "HQKAN": "network", "QKAN": "network", "Model": "network", "build_model": "network", "extend_reps": "network",
    "qkan_layers": "network",
    "HQKANSpec": "spec", "ModelSpec": "spec", "QKANSpec": "spec", "SequenceSpec": "spec", "parse_spec": "spec",
    "SequenceModel": "sequence",
    "load_model": "storage", "model_from_bytes": "storage", "model_to_bytes": "storage", "save_model": "storage",
    "fit": "training",
}

__all__ = [
    "HQKAN", "QKAN", "HQKANSpec", "InputError", "Model", "ModelSpec", "QKANLayer", "QKANSpec", "SequenceModel",
    "SequenceSpec", "build_model", "extend_reps", "fit", "load_model", "model_from_bytes", "model_to_bytes",
    "parse_spec", "qkan_layers", "save_model",
]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from qkan_orch.models.errors import InputError
    from qkan_orch.models.layer import QKANLayer
    from qkan_orch.models.network import HQKAN, QKAN, Model, build_model, extend_reps, qkan_layers
    from qkan_orch.models.sequence import SequenceModel
    from qkan_orch.models.spec import HQKANSpec, ModelSpec, QKANSpec, SequenceSpec, parse_spec
    from qkan_orch.models.storage import load_model, model_from_bytes, model_to_bytes, save_model
    from qkan_orch.models.training import fit
