"""Torch models of QKAN networks: the classical simulator that shares hardware's parameters."""

from qkan_orch.models.errors import InputError
from qkan_orch.models.layer import QKANLayer
from qkan_orch.models.network import HQKAN, QKAN, Model, build_model, extend_reps, qkan_layers
from qkan_orch.models.spec import HQKANSpec, ModelSpec, QKANSpec, parse_spec
from qkan_orch.models.storage import load_model, model_from_bytes, model_to_bytes, save_model
from qkan_orch.models.training import fit

__all__ = [
    "HQKAN", "QKAN", "HQKANSpec", "InputError", "Model", "ModelSpec", "QKANLayer",
    "QKANSpec", "build_model", "extend_reps", "fit", "load_model", "model_from_bytes", "model_to_bytes", "parse_spec",
    "qkan_layers", "save_model",
]
