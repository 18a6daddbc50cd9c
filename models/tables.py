"""Numeric tables users hand us (model inputs, training data) as .npy or .csv bytes.

.npy is read with ``allow_pickle=False``; .csv may start with a header row.
The CLI (files) and the REST service (uploads) share this one parser.
"""

import io

import numpy as np

from qkan_orch.models.errors import InputError


def parse_table(data: bytes, field: str, name: str) -> np.ndarray:
    """A 2-D float64 array; the format is taken from the content (.npy magic) or else the name."""
    try:
        if data.startswith(b"\x93NUMPY"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
        elif name.lower().endswith(".npy"):
            raise ValueError("not an .npy file")
        else:
            array = _csv(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise InputError(field, f"{name} is not a readable numeric array ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise InputError(field, f"{name} holds {array.dtype} values, not numbers")
    array = np.asarray(array, dtype=np.float64)
    return array[:, None] if array.ndim == 1 else array


def _csv(text: str) -> np.ndarray:
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        try:
            float(lines[0].split(",")[0])
        except ValueError:
            lines = lines[1:]  # a header row
    if not lines:
        return np.zeros((0, 0))
    return np.loadtxt(lines, delimiter=",", ndmin=2, dtype=np.float64)
