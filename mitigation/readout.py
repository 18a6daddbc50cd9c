"""Read-out correction from calibration circuits measured in the same provider job as the data.

Per copy w (one physical qubit), with e0 = P(read 1 | prepared 0) and
e1 = P(read 0 | prepared 1), a measured p0 is m = e1 + (1 − e0 − e1)·p0, so

    p0 = (m − e1) / D,   D = 1 − e0 − e1,

the inverse of the 2×2 assignment matrix [[1−e0, e1], [e0, 1−e1]]. Its partial
derivatives — ∂p0/∂m = 1/D, ∂p0/∂e0 = p0/D, ∂p0/∂e1 = (p0 − 1)/D — carry the
shot noise of the data and of the calibration into the standard error.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_CONTRAST = 1e-3  # D below this means a qubit that reads nothing: no correction can recover it


@dataclass(frozen=True)
class Assignment:
    """Per copy: the estimated flip probabilities and their variances from ``shots`` shots each (None: exact
    probabilities, as a backend run without shots reads them)."""

    e0: np.ndarray  # (W,) P(1 | 0)
    e1: np.ndarray  # (W,) P(0 | 1)
    shots: int | None

    @classmethod
    def from_p0(cls, prepared_0: np.ndarray, prepared_1: np.ndarray, width: int, shots: int | None
                ) -> "Assignment":
        """From the p0 of ``k`` calibration circuits per preparation, rows ordered copy-fastest."""
        zero = np.asarray(prepared_0, dtype=np.float64).reshape(-1, width)
        one = np.asarray(prepared_1, dtype=np.float64).reshape(-1, width)
        return cls(e0=1.0 - zero.mean(axis=0), e1=one.mean(axis=0),
                   shots=None if shots is None else shots * zero.shape[0])

    def variances(self) -> tuple[np.ndarray, np.ndarray]:
        """Binomial variances of e0 and e1, Laplace-smoothed so a flawless calibration still counts; 0 when
        the calibration is exact."""
        if self.shots is None:
            return np.zeros_like(self.e0), np.zeros_like(self.e1)
        n = float(self.shots)

        def var(e: np.ndarray) -> np.ndarray:
            smoothed = (e * n + 1.0) / (n + 2.0)
            return smoothed * (1.0 - smoothed) / n

        return var(self.e0), var(self.e1)

    def contrast(self) -> np.ndarray:
        return np.maximum(1.0 - self.e0 - self.e1, MIN_CONTRAST)

    @classmethod
    def from_description(cls, described: list[dict[str, Any]]) -> "Assignment":
        """The assignment ``describe`` wrote (a result's metadata), to correct later chunks of its round."""
        return cls(e0=np.array([d["matrix"][1][0] for d in described]),
                   e1=np.array([d["matrix"][0][1] for d in described]),
                   shots=None if described[0]["shots"] is None else int(described[0]["shots"]))

    def describe(self, qubits: list[int] | None) -> list[dict[str, Any]]:
        """Per copy: its physical qubit (where known), the assignment matrix and the shots behind it."""
        return [{"copy": w, "qubit": None if qubits is None else int(qubits[w]),
                 "matrix": [[1.0 - float(e0), float(e1)], [float(e0), 1.0 - float(e1)]], "shots": self.shots}
                for w, (e0, e1) in enumerate(zip(self.e0, self.e1, strict=True))]
