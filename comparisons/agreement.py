r"""Agreement of outputs ``y ± σ_y`` with a reference ``r ± σ_r`` (σ_r = 0 for ``exact`` and for an emulator
run without shots, which predicts a device's noisy outputs exactly).

Per output value i (every sample's every output, n in all) the error is
e_i = y_i − r_i and the shots alone explain s_i = √(σ_y,i² + σ_r,i²) of it:

- RMSE = √(mean e²), the largest |e|, and σ = √(mean s²), the RMSE shot noise
  alone would give: RMSE ≈ σ means the shots explain the differences;
- z_i = e_i / s_i and χ² = Σ z_i², which for consistent results is χ² with
  n degrees of freedom: mean z² ≈ 1 and ``p_value`` = P(χ²_n ≥ χ²) is uniform
  on [0, 1]; device noise the errors do not report (a shrink towards 0, a
  bias) makes it tiny. Where s_i = 0 (both exact) z_i is 0 for equal
  values and infinite otherwise;
- the least-squares line y ≈ slope·r + intercept: depolarising noise shrinks
  every ⟨Z⟩ towards 0, which shows as a slope below 1.

The outputs of one sample share its hidden activations, so for models with
several outputs the z_i are not independent and χ² is an approximation; the
samples themselves run on separate circuits.
"""

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2


@dataclass(frozen=True)
class Agreement:
    n: int  # output values compared
    rmse: float
    max_error: float
    sigma: float  # the RMSE the reported standard errors explain
    mean_z2: float
    p_value: float  # P(χ²_n ≥ Σ z²): consistency of the differences with the reported errors
    slope: float  # NaN when the reference is constant
    intercept: float

    def summary(self) -> str:
        return (f"RMSE {self.rmse:.4g}, max error {self.max_error:.4g}, σ from shots {self.sigma:.4g}, "
                f"slope {self.slope:.4g}, mean z² {self.mean_z2:.3g} (χ² p {self.p_value:.2g})")


def edge_rmse(activations: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each edge's activation RMSE over the samples: samples × out × in arrays give out × in."""
    return np.sqrt(np.mean((np.asarray(activations, float) - np.asarray(reference, float)) ** 2, axis=0))


def agreement(outputs: np.ndarray, stderr: np.ndarray, reference: np.ndarray,
              reference_stderr: np.ndarray | None = None) -> Agreement:
    """How ``outputs ± stderr`` agree with ``reference`` (± ``reference_stderr``; None: exact), value by value."""
    y, r = np.asarray(outputs, float).ravel(), np.asarray(reference, float).ravel()
    if y.shape != r.shape or y.size == 0:
        raise ValueError(f"outputs ({y.size} values) and reference ({r.size}) must be non-empty and alike")
    var = np.asarray(stderr, float).ravel() ** 2
    if reference_stderr is not None:
        var = var + np.asarray(reference_stderr, float).ravel() ** 2
    error = y - r
    spread = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(spread > 0, error / spread, np.where(error == 0, 0.0, np.inf))
    total = float(np.sum(z**2))
    slope, intercept = (np.polyfit(r, y, 1) if y.size > 1 and np.ptp(r) > 0 else (np.nan, np.nan))
    return Agreement(
        n=int(y.size), rmse=float(np.sqrt(np.mean(error**2))), max_error=float(np.max(np.abs(error))),
        sigma=float(np.sqrt(np.mean(var))), mean_z2=total / y.size, p_value=float(chi2.sf(total, y.size)),
        slope=float(slope), intercept=float(intercept),
    )
