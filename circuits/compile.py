"""Compile one QKAN layer applied to a batch of inputs into an ActivationBatch.

Array operations only: the cost is a few numpy calls whatever the batch size,
never one Python object per circuit. Rows are deduplicated per edge and input
value (the circuit of edge (o, i) depends on the sample only through x[b, i]),
and edges whose weight pw·m is zero produce no rows at all.
"""

import numpy as np
import torch

from qkan_orch.circuits.batch import ActivationBatch, Segment, Template
from qkan_orch.models.layer import QKANLayer


def compile_layer(layer: QKANLayer, x: np.ndarray | torch.Tensor, name: str = "layer") -> ActivationBatch:
    """The batch of edge circuits that ``layer`` needs to evaluate ``x`` of shape (B, in)."""
    x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    ansatz = layer.ansatz
    values, column_start, inverse = _unique_per_column(x)
    edge_out, edge_in = np.nonzero(_to_numpy(layer.edge_weights()) != 0.0)
    per_edge = np.diff(column_start)[edge_in]  # rows of each active edge
    edge_start = np.cumsum(per_edge) - per_edge
    num_rows = int(per_edge.sum())
    edge_of_row = np.repeat(np.arange(edge_out.size), per_edge)
    u = values[column_start[edge_in][edge_of_row] + np.arange(num_rows) - edge_start[edge_of_row]]

    params = np.empty((num_rows, ansatz.num_params), dtype=np.float64)
    theta = _to_numpy(layer.theta)[edge_out, edge_in].reshape(edge_out.size, ansatz.theta_columns.size)
    params[:, ansatz.theta_columns.ravel()] = theta[edge_of_row]
    if layer.encodes_affinely:
        weight = _to_numpy(layer.preacts_weight)[edge_out, edge_in][edge_of_row]
        bias = _to_numpy(layer.preacts_bias)[edge_out, edge_in][edge_of_row]
        params[:, ansatz.encoding_columns] = weight * u[:, None] + bias
    else:
        params[:, ansatz.encoding_columns] = u[:, None]

    slots = np.full((x.shape[0], layer.out_dim, layer.in_dim), -1, dtype=np.int64)
    slots[:, edge_out, edge_in] = edge_start[None, :] + inverse[edge_in].T
    return ActivationBatch(
        template=Template(ansatz.name, ansatz.reps),
        params=params,
        segments=(Segment(name, slots),),
        readout="fast" if layer.fast_measure else "z",
    )


def _unique_per_column(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of every column of ``x``, concatenated column after column.

    Returns (values, column_start, inverse) where column i's distinct values
    are ``values[column_start[i]:column_start[i+1]]`` and
    ``values[column_start[i] + inverse[i, b]] == x[b, i]``.
    """
    cols = x.T  # (I, B)
    order = np.argsort(cols, axis=1, kind="stable")
    ordered = np.take_along_axis(cols, order, axis=1)
    is_new = np.ones_like(ordered, dtype=bool)
    is_new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    local = np.cumsum(is_new, axis=1) - 1
    inverse = np.empty_like(local)
    np.put_along_axis(inverse, order, local, axis=1)
    counts = is_new.sum(axis=1)
    column_start = np.concatenate([[0], np.cumsum(counts)])
    return ordered[is_new], column_start, inverse


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()
