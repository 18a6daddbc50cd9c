"""Tables from uploads: the shared parser, plus the checks a job's data needs."""

import numpy as np

from qkan_orch.models.errors import InputError
from qkan_orch.models.tables import parse_table


def read_table(data: bytes, field: str, filename: str) -> np.ndarray:
    """A finite, non-empty 2-D float64 table from uploaded .npy or .csv bytes."""
    array = parse_table(data, field, filename)
    if array.ndim != 2 or array.shape[0] == 0:
        raise InputError(field, f"{filename} must be a non-empty 2-D table")
    if not np.isfinite(array).all():
        raise InputError(field, f"{filename} contains NaN or infinity")
    return array
