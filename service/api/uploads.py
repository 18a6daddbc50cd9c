"""Tables from uploads: the shared parser, plus the checks a job's data needs."""

import numpy as np

from qkan_orch.models.errors import InputError
from qkan_orch.models.tables import parse_table


def read_table(data: bytes, field: str, filename: str) -> np.ndarray:
    """A finite, non-empty float64 array from uploaded .npy or .csv bytes: a 2-D table (one sample per row), or
    from .npy 3-D windows (samples × steps × features) for a sequence model."""
    array = parse_table(data, field, filename)
    if array.ndim not in (2, 3) or array.shape[0] == 0:
        raise InputError(field, f"{filename} must be a non-empty 2-D table (or 3-D windows for a sequence model)")
    if not np.isfinite(array).all():
        raise InputError(field, f"{filename} contains NaN or infinity")
    return array


def inputs_array(rows: list) -> np.ndarray:
    """A JSON body's inputs as float64: rows of numbers, or windows of rows for a sequence model; ragged → 422."""
    if not rows:
        raise InputError("inputs", "is empty: at least one sample is needed")
    try:
        return np.asarray(rows, dtype=np.float64)
    except ValueError:
        raise InputError("inputs", "rows have different lengths") from None
