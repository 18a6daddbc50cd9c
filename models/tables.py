"""Numeric tables users hand us (model inputs, training data) as .npy or .csv bytes.

.npy is read with ``allow_pickle=False``; .csv may start with a header row.
The CLI (files) and the REST service (uploads) share this one parser.
"""

import io
from collections.abc import Iterator

import numpy as np

from qkan_orch.models.errors import InputError

# Bytes decoded, split and parsed at a time. Decoding, str.splitlines and numpy hold the GIL while they work,
# so a service thread reading a 60 MB upload in one go stalls the API's event loop for over a second; between
# blocks of this size (~6 000 lines, a few ms) the loop gets its turn.
CSV_BLOCK_BYTES = 2**18


def parse_table(data: bytes, field: str, name: str) -> np.ndarray:
    """A 2-D float64 array; the format is taken from the content (.npy magic) or else the name."""
    try:
        if data.startswith(b"\x93NUMPY"):
            array = np.load(io.BytesIO(data), allow_pickle=False)
        elif name.lower().endswith(".npy"):
            raise ValueError("not an .npy file")
        else:
            array = _csv(data)
    except (ValueError, UnicodeDecodeError, EOFError, OSError) as exc:
        raise InputError(field, f"{name} is not a readable numeric array ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise InputError(field, f"{name} holds {array.dtype} values, not numbers")
    array = np.asarray(array, dtype=np.float64)
    return array[:, None] if array.ndim == 1 else array


def _csv(data: bytes) -> np.ndarray:
    """UTF-8 text, block by block (``CSV_BLOCK_BYTES``); the first non-empty line may be a header."""
    arrays: list[np.ndarray] = []
    rows, first = 0, True
    for block in _blocks(data, CSV_BLOCK_BYTES):
        lines = [line for line in block.decode("utf-8").splitlines() if line.strip()]
        if first and lines:
            first = False
            if _is_header(lines[0]):
                lines = lines[1:]
        if lines:
            arrays.append(_csv_rows(lines, rows))
            rows += len(lines)
    if not arrays:
        return np.zeros((0, 0))
    if len({a.shape[1] for a in arrays}) > 1:
        raise ValueError("rows have different numbers of columns")
    return np.concatenate(arrays)


def _blocks(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` in pieces of about ``size`` bytes, each ending with a line (so no UTF-8 character is split)."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start + size)
        end = len(data) if end < 0 else end + 1
        yield data[start:end]
        start = end


def _is_header(line: str) -> bool:
    try:
        float(line.split(",")[0])
    except ValueError:
        return True
    return False


def _csv_rows(lines: list[str], before: int) -> np.ndarray:
    try:
        return np.loadtxt(lines, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as exc:  # numpy counts rows from this block's first
        raise ValueError(f"in the data rows from {before + 1} on: {exc}" if before else str(exc)) from None
