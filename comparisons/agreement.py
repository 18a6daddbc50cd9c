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

χ²_n assumes independent z_i, and two things correlate them. The outputs of
one sample share its hidden activations (models with several outputs): χ² is
an approximation there. And samples share circuits: the compiler runs one
circuit per edge and input value (``circuits.compile``), so samples with an
input value in common (a grid, a categorical feature) carry that circuit's
shot noise together, and in a QKAN-LSTM every sample's first step runs the
same h = 0 circuits. Mean z² stays unbiased, but Σ z² over such samples
spreads wider than χ²_n and P(χ²_n ≥ χ²) comes out too small: on the demo's
8×8 grid an ideal run gave p < 10⁻⁴ in 2 % of runs instead of 0.01 %
(``bench/agreement_calibration.py``). So ``p_value`` is computed over the
samples ``independent_samples`` picks, no two of which share a circuit, and
``chi2_n`` says over how many output values: for a QKAN all of them when no
input column repeats a value, one sample per distinct value on a grid. Counted
that way an ideal run's p is uniform again (p < 0.01 in 1.0 % of 400 runs on
the grid). Not removed: read-out mitigation corrects every row on a qubit
with the same calibration circuits, so part of a mitigated error is common
to all samples. It matters with many samples: read-out-corrected ideal runs
(``emulate:dm``, read-out flip 0.02 only, 4000 shots) gave a calibrated p on
64 samples, and on 1000 samples p < 0.01 in 3 % and p < 10⁻⁴ in 1 % of 100
runs.
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
    p_value: float  # P(χ²_m ≥ Σ z²) over the independent samples' m values: consistency with the reported errors
    chi2_n: int  # the output values that p_value is computed over (m)
    slope: float  # NaN when the reference is constant
    intercept: float

    def summary(self) -> str:
        return (f"RMSE {self.rmse:.4g}, max error {self.max_error:.4g}, σ from shots {self.sigma:.4g}, "
                f"slope {self.slope:.4g}, mean z² {self.mean_z2:.3g} (χ² p {self.p_value:.2g} over {self.chi2_n})")


def edge_rmse(activations: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each edge's activation RMSE over the samples: samples × out × in arrays give out × in."""
    return np.sqrt(np.mean((np.asarray(activations, float) - np.asarray(reference, float)) ** 2, axis=0))


MIXING_KINDS = ("hqkan", "hqkan-lstm")  # the first quantum layer sees a classical (Linear) map of the inputs


def independent_samples(inputs: np.ndarray, kind: str = "") -> np.ndarray:
    """Which samples the χ² may count together: no two of them share a circuit of a model of ``kind`` ("": not
    known).

    A QKAN runs one circuit per edge and input value, so a sample joins, in order, unless it has a value in
    common with one that joined (the same column); all of them when no column repeats a value. A QKAN-LSTM runs
    every sample's first step on the same h = 0 circuits: the first sample only. An HQKAN or HQKAN-LSTM feeds its
    QKAN a Linear map of the whole input row (of the first step), which differs wherever the rows differ: one
    sample per distinct row. Later layers and steps see each sample's own noisy values. Any other kind, or none,
    gets the first two rules, which hold for every kind.
    """
    x = np.asarray(inputs)
    chosen = np.zeros(len(x), dtype=bool)
    if kind in MIXING_KINDS:
        rows = (x[:, 0] if x.ndim == 3 else x).reshape(len(x), -1)
        chosen[np.unique(rows, axis=0, return_index=True)[1]] = True
        return chosen
    if x.ndim != 2:
        chosen[:1] = True
        return chosen
    if all(np.unique(column).size == len(x) for column in x.T):
        chosen[:] = True
        return chosen
    taken: list[set[float]] = [set() for _ in range(x.shape[1])]
    for b, row in enumerate(x.tolist()):  # greedy: no array operation picks a maximal set of disjoint rows
        if not any(value in seen for value, seen in zip(row, taken, strict=True)):
            chosen[b] = True
            for value, seen in zip(row, taken, strict=True):
                seen.add(value)
    return chosen


def agreement(outputs: np.ndarray, stderr: np.ndarray, reference: np.ndarray,
              reference_stderr: np.ndarray | None = None, independent: np.ndarray | None = None) -> Agreement:
    """How ``outputs ± stderr`` agree with ``reference`` (± ``reference_stderr``; None: exact), value by value;
    the χ² p-value over the samples ``independent`` marks (``independent_samples``; None: every value counts as
    independent)."""
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
    counted = z if independent is None else z.reshape(len(independent), -1)[np.asarray(independent, bool)].ravel()
    total, counted_total = float(np.sum(z**2)), float(np.sum(counted**2))
    slope, intercept = (np.polyfit(r, y, 1) if y.size > 1 and np.ptp(r) > 0 else (np.nan, np.nan))
    return Agreement(
        n=int(y.size), rmse=float(np.sqrt(np.mean(error**2))), max_error=float(np.max(np.abs(error))),
        sigma=float(np.sqrt(np.mean(var))), mean_z2=total / y.size,
        p_value=float(chi2.sf(counted_total, counted.size)), chi2_n=int(counted.size),
        slope=float(slope), intercept=float(intercept),
    )
