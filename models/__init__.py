"""Torch models of QKAN networks: the classical simulator that shares hardware's parameters."""

from models.errors import InputError
from models.layer import QKANLayer
from models.network import HQKAN, QKAN, Model, build_model, extend_reps, qkan_layers
from models.spec import HQKANSpec, ModelSpec, QKANSpec, parse_spec
from models.storage import load_model, model_from_bytes, model_to_bytes, save_model
from models.training import fit

__all__ = [
    "HQKAN", "QKAN", "HQKANSpec", "InputError", "Model", "ModelSpec", "QKANLayer",
    "QKANSpec", "build_model", "extend_reps", "fit", "load_model", "model_from_bytes", "model_to_bytes", "parse_spec",
    "qkan_layers", "save_model",
]
