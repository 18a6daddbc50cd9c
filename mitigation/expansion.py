"""Mitigation as a pair of pure functions around a backend: ``expand`` a round, ``reduce`` its result.

``expand`` turns a round of N rows into parts run as one provider job at one
width W: the N rows at every scale factor λ (the fold is part of the template,
so every lowering emits G(G†G)^k), then k = ⌈calibration_shots / shots⌉
circuits preparing |0⟩ on all W copies and k preparing |1⟩ (k = 1 on a
backend run without shots: its probabilities, the calibration's too, are
exact, and every standard error is 0) — row j of a
calibration part runs on copy j mod W, so every physical qubit of the round
gets its own assignment matrix. Packing, placement, splitting at provider
limits, estimates and budgets all see the expanded parts.

``reduce`` turns the parts' p0 back into one p0 per original row: read-out
correction of every scale with the matrix of the row's copy (row r runs on
copy r mod W), then extrapolation to λ = 0; standard errors carry the data's
and the calibration's shot noise through both (``readout``, ``extrapolation``).
The scale-1 rows as read are kept as the raw result.
"""

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from qkan_orch.circuits.batch import ActivationBatch, BatchResult, Parts, Template
from qkan_orch.mitigation.extrapolation import extrapolate
from qkan_orch.mitigation.readout import Assignment
from qkan_orch.mitigation.setting import Mitigation


@dataclass(frozen=True)
class Expansion:
    """Where an expanded round's rows are: JSON, so it rides on a pending provider handle."""

    rows: int
    width: int
    scale_factors: tuple[int, ...]
    repeats: int  # calibration circuits per preparation; 0 without read-out mitigation

    @property
    def part_rows(self) -> list[int]:
        return [self.rows] * len(self.scale_factors) + [self.repeats * self.width] * (2 if self.repeats else 0)

    def executions(self) -> int:
        """Circuits the expanded round runs (each part padded to whole circuits of W copies)."""
        return sum(math.ceil(rows / self.width) for rows in self.part_rows)

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "width": self.width, "scale_factors": list(self.scale_factors),
                "repeats": self.repeats}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Expansion":
        return cls(int(obj["rows"]), int(obj["width"]), tuple(int(s) for s in obj["scale_factors"]),
                   int(obj["repeats"]))


def plan_expansion(mitigation: Mitigation, rows: int, width: int, shots: int | None, calibrated: bool = False
                   ) -> Expansion:
    """``calibrated``: the round's read-out calibration was measured already (an earlier chunk of it).
    ``shots`` None: the backend returns exact probabilities, so one circuit per preparation is exact."""
    if not (mitigation.readout and rows and not calibrated):
        repeats = 0
    else:
        repeats = 1 if shots is None else math.ceil(mitigation.calibration_shots / shots)
    return Expansion(rows, width, mitigation.scale_factors, repeats)


def expand(batch: ActivationBatch, mitigation: Mitigation, width: int, shots: int | None, calibrated: bool = False
           ) -> tuple[Parts, Expansion]:
    """The parts one provider job runs for ``batch`` at packing width ``width``."""
    layout = plan_expansion(mitigation, batch.num_rows, width, shots, calibrated)
    fenced = len(layout.scale_factors) > 1  # every scale fenced alike, so λ counts executed gates exactly
    parts = [ActivationBatch(replace(batch.template, fold=s, fenced=fenced), batch.params, (), batch.readout)
             for s in layout.scale_factors]
    for bit in (0, 1) if layout.repeats else ():
        calibration = np.zeros((layout.repeats * width, 0), dtype=np.float64)
        parts.append(ActivationBatch(Template.preparation(bit), calibration, (), batch.readout))
    return tuple(parts), layout


def reduce(layout: Expansion, mitigation: Mitigation, result: BatchResult, assignment: Assignment | None = None
           ) -> BatchResult:
    """One mitigated p0 and standard error per original row, the raw scale-1 rows beside them; read-out
    correction with the calibration measured in this result, or the ``assignment`` given (its round's)."""
    n, scales = layout.rows, np.asarray(layout.scale_factors, dtype=np.float64)
    p0, var = np.asarray(result.p0, dtype=np.float64), np.square(np.asarray(result.p0_stderr, dtype=np.float64))
    measured = p0[:n * scales.size].reshape(scales.size, n).T  # (N, S)
    measured_var = var[:n * scales.size].reshape(scales.size, n).T
    copy = np.arange(n) % layout.width
    summary: dict[str, Any] = mitigation.to_json()
    metadata = dict(result.metadata)
    if layout.repeats:
        start, size = n * scales.size, layout.repeats * layout.width
        assignment = Assignment.from_p0(p0[start:start + size], p0[start + size:start + 2 * size], layout.width,
                                        result.shots or None)  # 0 shots: exact probabilities
    if assignment is not None and mitigation.readout:
        var_e0, var_e1 = (v[copy][:, None] for v in assignment.variances())
        e1, contrast = assignment.e1[copy][:, None], assignment.contrast()[copy][:, None]
        corrected = (measured - e1) / contrast
        summary["readout"] = assignment.describe(_copies(result.qubits, layout.width))
        if "placement" in metadata:  # the job's placement carries each qubit's matrix with its calibration
            metadata["placement"] = {**metadata["placement"], "readout": summary["readout"]}
    else:
        var_e0 = var_e1 = np.zeros((n, 1))
        contrast, corrected = np.ones((n, 1)), measured
    if scales.size > 1:
        estimate, gradient = extrapolate(scales, corrected, np.sqrt(measured_var) / contrast, mitigation.extrapolation)
    else:
        estimate, gradient = corrected[:, 0], np.ones((n, 1))
    variance = (np.sum(np.square(gradient) * measured_var, axis=1) / np.square(contrast[:, 0])
                + np.square(np.sum(gradient * corrected, axis=1) / contrast[:, 0]) * var_e0[:, 0]
                + np.square(np.sum(gradient * (corrected - 1.0), axis=1) / contrast[:, 0]) * var_e1[:, 0])
    metadata["mitigation"] = summary
    return replace(result, p0=estimate, p0_stderr=np.sqrt(variance), metadata=metadata,
                   raw_p0=measured[:, 0].copy(), raw_p0_stderr=np.sqrt(measured_var[:, 0]))


def _copies(qubits: list[int] | None, width: int) -> list[int] | None:
    """The physical qubit of each of the ``width`` copies, where the backend placed them."""
    return qubits[:width] if qubits and len(qubits) >= width else None
