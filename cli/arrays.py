"""Reading inputs and writing outputs as .npy or .csv, atomically and without pickle."""

import os
import tempfile

import numpy as np

from models.errors import InputError

SUFFIXES = (".npy", ".csv")


def read_array(path: str, field: str = "inputs") -> np.ndarray:
    """A 2-D float array from .npy (``allow_pickle=False``) or numeric .csv (optional header)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise InputError(field, f"{path}: use a .npy or .csv file")
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        else:
            array = _read_csv(path)
    except FileNotFoundError:
        raise InputError(field, f"file not found: {path}") from None
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(field, f"{path} is not a readable numeric array ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise InputError(field, f"{path} holds {array.dtype} values, not numbers")
    array = np.asarray(array, dtype=np.float64)
    return array[:, None] if array.ndim == 1 else array


def _read_csv(path: str) -> np.ndarray:
    with open(path, encoding="utf-8") as fh:
        lines = [line for line in fh.read().splitlines() if line.strip()]
    if not lines:
        return np.zeros((0, 0))
    try:
        float(lines[0].split(",")[0])
    except ValueError:
        lines = lines[1:]  # a header row
    if not lines:
        return np.zeros((0, 0))
    return np.loadtxt(lines, delimiter=",", ndmin=2, dtype=np.float64)


def write_array(path: str, array: np.ndarray, field: str = "out") -> None:
    """Write to a temporary file beside ``path`` and rename, so no half-written file remains."""
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
                np.savetxt(fh, array, delimiter=",", fmt="%.17g")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
