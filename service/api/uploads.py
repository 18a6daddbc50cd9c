"""Numeric tables from uploads (.npy without pickle, or .csv) and from JSON arrays."""

import io

import numpy as np

from models.errors import InputError


def read_table(data: bytes, field: str, filename: str) -> np.ndarray:
    """A finite 2-D float64 array from .npy or .csv bytes (chosen by content, then name)."""
    try:
        if data.startswith(b"\x93NUMPY"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
        elif filename.lower().endswith(".npy"):
            raise ValueError("not an .npy file")
        else:
            array = _csv(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise InputError(field, f"{filename} is not a readable numeric .npy or .csv ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise InputError(field, f"{filename} holds {array.dtype} values, not numbers")
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] == 0:
        raise InputError(field, f"{filename} must be a non-empty 2-D table")
    if not np.isfinite(array).all():
        raise InputError(field, f"{filename} contains NaN or infinity")
    return array


def _csv(text: str) -> np.ndarray:
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        try:
            float(lines[0].split(",")[0])
        except ValueError:
            lines = lines[1:]  # a header row
    if not lines:
        raise ValueError("no rows")
    return np.loadtxt(lines, delimiter=",", ndmin=2, dtype=np.float64)
