"""Reading inputs and writing outputs as .npy or .csv files (writes are atomic), and the flags that name them."""

import argparse
import json
import os
import tempfile

import numpy as np

from qkan_orch.models.errors import InputError
from qkan_orch.models.tables import parse_table

SUFFIXES = (".npy", ".csv")


def read_array(path: str, field: str = "inputs") -> np.ndarray:
    """A 2-D float array from a .npy (``allow_pickle=False``) or numeric .csv file."""
    if os.path.splitext(path)[1].lower() not in SUFFIXES:
        raise InputError(field, f"{path}: use a .npy or .csv file")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise InputError(field, f"file not found: {path}") from None
    except OSError as exc:
        raise InputError(field, f"cannot read {path} ({exc.strerror})") from None
    return parse_table(data, field, path)


def write_array(path: str, array: np.ndarray, field: str = "out") -> None:
    """Write to a temporary file beside ``path`` and rename, so no half-written file remains.

    A .csv starts with a header row ``y0,y1,…`` naming the model's outputs (stderr files use the same names:
    column k is the error of output k); ``read_array`` skips it.
    """
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise InputError(field, f"{path}: use a .npy or .csv file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise InputError(field, f"directory does not exist: {directory}")
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            if suffix == ".npy":
                np.save(fh, array)
            else:
                columns = array.shape[1] if array.ndim == 2 else 1
                header = ",".join(f"y{k}" for k in range(columns))
                np.savetxt(fh, array, delimiter=",", fmt="%.17g", header=header, comments="")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


MITIGATION_HELP = ("none | readout | zne | readout+zne, or a JSON object with method, calibration_shots, "
                   "scale_factors (odd, default [1,3,5]), extrapolation (linear | richardson | exponential); "
                   "default: readout on noisy simulators and QPUs, none on ideal ones")


def parse_mitigation(text: str | None) -> str | dict | None:
    """``--mitigation``: a method name, or a JSON object of settings (checked by the backend's side)."""
    if text is None or not text.lstrip().startswith("{"):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError("mitigation", f"not valid JSON ({exc})") from None


def pack_arg(value: str) -> int | str:
    """``--pack``: a positive integer or ``auto`` (width and qubits from the device's calibration)."""
    if value == "auto":
        return value
    try:
        width = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer, got {value!r}") from None
    if width < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a positive integer, got {value!r}")
    return width


def parse_options(text: str | None) -> dict:
    if not text:
        return {}
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError("options", f"not valid JSON ({exc})") from None
    if not isinstance(options, dict):
        raise InputError("options", "must be a JSON object")
    return options
