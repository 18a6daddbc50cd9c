"""A local round in chunks of rows, so that the caller gets control back between them.

A local backend runs a whole batch inside ``submit``: a round of thousands of
rows on a noisy simulator is minutes in one call that nothing can stop. Run in
chunks, each sized from the time per row the previous chunk took to last about
``chunk_seconds``, a long round can report rows done and read a cancel flag
between chunks. The first chunk is small (``FIRST_ROWS`` rows and at most
``FIRST_SHOTS`` shots), and a round no bigger than it is one submission of the
batch itself, exactly as before chunking existed.

Chunks end on whole packed circuits, so their executions and shots add up to
one submission's; on an analytic backend they end on whole blocks of
``ANALYTIC_ROWS`` rows, so torch's vectorised kernels see each row in the same
lane as in one submission and the p0 are bit-identical (as long as torch
splits neither the round nor a chunk over threads, which it does only beyond
2¹⁵ rows — there the last bits may differ).
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qkan_orch.backends.base import Backend, Handle, Pack, SeedStream
from qkan_orch.circuits.batch import ActivationBatch, BatchResult

FIRST_ROWS = 32  # braket:local_dm at 1000 shots: about half a second
FIRST_SHOTS = 32_000  # circuits × shots of the first chunk at most: a high-shot round starts with a few rows
ANALYTIC_ROWS = 64  # a whole number of SIMD blocks for any CPU torch vectorises for


@dataclass(frozen=True)
class Chunk:
    """One chunk's result; ``rows_done`` of the round with it, ``seconds_left``: the rest at its pace."""

    result: BatchResult
    rows_done: int
    seconds_left: float


def run_in_chunks(backend: Backend, batch: ActivationBatch, shots: int | None, pack: Pack,
                  options: dict[str, Any] | None, chunk_seconds: float) -> Iterator[Chunk]:
    """Run ``batch`` on a ``chunkable`` backend chunk by chunk; stop iterating to stop the round."""
    resolved_shots, width, _ = backend.validate(shots, pack, options)
    granule = width if backend.capabilities().shot_based else ANALYTIC_ROWS
    first = FIRST_ROWS if resolved_shots is None else min(FIRST_ROWS, FIRST_SHOTS * width // resolved_shots)
    size = _whole(max(first, 1), granule)
    rows, start = batch.num_rows, 0
    if rows <= size:
        yield Chunk(_finished(backend, backend.submit(batch, shots, pack, options)), rows, 0.0)
        return
    while start < rows:
        stop = min(rows, start + size)
        began = time.perf_counter()
        seeded = SeedStream.apply(options, SeedStream.CHUNK, start // width)
        handle = backend.submit(batch.slice_rows(start, stop), shots, pack, seeded)
        per_row = max(time.perf_counter() - began, 1e-6) / (stop - start)
        start = stop
        result = _finished(backend, handle)
        backend = backend.continuing(result)  # e.g. one read-out calibration for the whole round
        yield Chunk(result, stop, (rows - stop) * per_row)
        size = _whole(max(1, int(chunk_seconds / per_row)), granule)


def _whole(rows: int, granule: int) -> int:
    """``rows`` rounded to a multiple of ``granule``, at least one granule."""
    return max(granule, rows // granule * granule)


def _finished(backend: Backend, handle: Handle) -> BatchResult:
    if handle.result is None:
        raise RuntimeError(f"backend '{backend.name}' is chunkable but left its batch pending at a provider")
    return handle.result
