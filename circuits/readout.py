"""The one place where a measured p0 becomes an activation value.

``z``:    ⟨Z⟩ = p0 − p1 = 2·p0 − 1, a true expectation value.
``fast``: |α| − |β| = √p0 − √p1, qkan's default; not an expectation value but
          a function of p0 alone, so hardware serves it from counts.
p0 is clipped to [0, 1] first, so mitigated or extrapolated estimates that
overshoot stay physical.
"""

import numpy as np

from qkan_orch.circuits.batch import Readout


def activation_values(p0: np.ndarray, readout: Readout) -> np.ndarray:
    p = np.clip(p0, 0.0, 1.0)
    if readout == "z":
        return 2.0 * p - 1.0
    return np.sqrt(p) - np.sqrt(1.0 - p)


def activation_stderr(p0: np.ndarray, p0_stderr: np.ndarray, readout: Readout) -> np.ndarray:
    """Standard error of the activation.

    ⟨Z⟩ is linear in p0. √p0 − √p1 has an unbounded slope at p0 ∈ {0, 1}, so
    instead of the derivative we take half the spread of the read-out over
    p0 ± σ (clipped), which equals the delta method away from the edges and
    stays finite at them.
    """
    if readout == "z":
        return 2.0 * np.asarray(p0_stderr, dtype=np.float64)
    upper = activation_values(p0 + p0_stderr, readout)
    lower = activation_values(p0 - p0_stderr, readout)
    return 0.5 * (upper - lower)
