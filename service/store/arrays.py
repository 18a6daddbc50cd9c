"""Arrays in the database as safetensors bytes (float64), never pickled."""

import numpy as np
from safetensors.numpy import load, save


def pack_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    return save({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()})


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
    return load(blob)
