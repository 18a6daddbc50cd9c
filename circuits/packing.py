"""Packing: W copies of the template on W qubits, so one shot serves W rows.

Row r runs on copy r % W of circuit r // W; copy w reads parameter columns
[w·P, (w+1)·P). Results come back as per-qubit marginal counts.
"""

import numpy as np


def pack_params(params: np.ndarray, width: int) -> np.ndarray:
    """(N, P) rows → (⌈N/W⌉, W·P) circuit parameters; the tail is padded with zero angles."""
    rows, num_params = params.shape
    circuits = -(-rows // width)
    padded = np.zeros((circuits * width, num_params), dtype=np.float64)
    padded[:rows] = params
    return padded.reshape(circuits, width * num_params)


def unpack_counts(counts: np.ndarray, rows: int) -> np.ndarray:
    """(circuits, W) per-qubit counts → (rows,) per-row counts, dropping the padding."""
    return counts.reshape(-1)[:rows]


def unpack_parts(counts: np.ndarray, part_rows: list[int]) -> np.ndarray:
    """Counts of several parts packed one after the other (each padded to whole circuits) → per-row counts
    of every part, in order."""
    width = counts.shape[1] if counts.ndim == 2 else 1
    pieces, start = [], 0
    for rows in part_rows:
        circuits = -(-rows // width)
        pieces.append(unpack_counts(counts[start:start + circuits], rows))
        start += circuits
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=counts.dtype)


def edge_qubits(slots: np.ndarray, qubits: list[int]) -> np.ndarray:
    """Where each edge of a layer ran: ``slots`` (samples, out, in) → (2, out, in), row 0 the physical qubit
    most of the edge's samples ran on (−1: none ran), row 1 the share of its samples that ran there.

    Row r runs on copy r % W, copy w on ``qubits[w]``: with W > 1 an edge's samples spread over several
    qubits, which the share says. One pass per copy, so memory stays that of ``slots``.
    """
    ran = slots >= 0
    total = np.maximum(ran.sum(axis=0), 1)
    copy = np.where(ran, slots % len(qubits), -1)
    best_count = np.zeros(slots.shape[1:], dtype=np.int64)
    best = np.full(slots.shape[1:], -1.0)
    for w, qubit in enumerate(qubits):
        count = (copy == w).sum(axis=0)
        better = count > best_count
        best_count = np.where(better, count, best_count)
        best = np.where(better, float(qubit), best)
    return np.stack([best, best_count / total])


def binomial_p0(zeros: np.ndarray, shots: int) -> tuple[np.ndarray, np.ndarray]:
    """p0 estimate and standard error from the number of 0 outcomes in ``shots``.

    The error uses the Laplace-smoothed p̃ = (n₀+1)/(n+2), so a row that read
    all 0s or all 1s still reports a non-zero uncertainty.
    """
    zeros = np.asarray(zeros, dtype=np.float64)
    smoothed = (zeros + 1.0) / (shots + 2.0)
    return zeros / shots, np.sqrt(smoothed * (1.0 - smoothed) / shots)
