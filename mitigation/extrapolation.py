"""Zero-noise extrapolation over rows, in closed form.

Every method returns the estimate at λ = 0 and its gradient g[r, s] =
∂estimate[r]/∂value[r, s], through which standard errors propagate
(Var = Σ_s g² Var_s for independent scales). For the linear methods the
estimate is Σ_s c_s·value_s with fixed coefficients (Σ c_s = 1):

* ``linear`` — least squares line a + bλ:  c_s = 1/S − λ̄(λ_s − λ̄)/Σ(λ − λ̄)²;
* ``richardson`` — the polynomial through all S points: c_s = Π_{t≠s} λ_t/(λ_t − λ_s);
* ``exponential`` — p0(λ) = ½ + A·e^{−kλ}, decaying to the fully depolarised ½
  (Mitiq's ``ExpFactory`` with asymptote ½): the linear fit of log|p0 − ½|,
  so g_s = (estimate − ½)·c_s/(p0_s − ½). Rows with a point within three
  standard errors of ½ (its logarithm is then mostly noise, and a point at
  or across ½ has none) use ``linear``.
"""

import numpy as np

EXP_MARGIN = 3.0  # standard errors every |p0 − ½| must exceed for the exponential fit of its row


def coefficients(scales: np.ndarray, method: str) -> np.ndarray:
    """The weights c_s of the values at ``scales`` whose sum is the value at λ = 0."""
    lam = np.asarray(scales, dtype=np.float64)
    if method == "richardson":
        diff = lam[None, :] - lam[:, None]  # [s, t] = λ_t − λ_s
        np.fill_diagonal(diff, 1.0)
        ratio = lam[None, :] / diff
        np.fill_diagonal(ratio, 1.0)
        return ratio.prod(axis=1)
    centred = lam - lam.mean()
    return 1.0 / lam.size - lam.mean() * centred / np.square(centred).sum()


def extrapolate(scales: np.ndarray, values: np.ndarray, stderr: np.ndarray, method: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Estimates (R,) at λ = 0 from ``values`` (R, S) ± ``stderr`` measured at ``scales`` (S,), and their
    gradients (R, S)."""
    values = np.asarray(values, dtype=np.float64)
    c = coefficients(scales, "richardson" if method == "richardson" else "linear")
    estimate, gradient = values @ c, np.broadcast_to(c, values.shape).copy()
    if method == "exponential":
        d = values - 0.5
        sign = np.sign(d[:, :1])
        fits = np.all(d * sign > np.maximum(EXP_MARGIN * stderr, 1e-9), axis=1)
        log_d = np.log(np.where(fits[:, None], np.abs(d), 1.0))
        amplitude = sign[:, 0] * np.exp(log_d @ c)
        estimate = np.where(fits, 0.5 + amplitude, estimate)
        exp_gradient = amplitude[:, None] * c / np.where(fits[:, None], d, 1.0)
        gradient = np.where(fits[:, None], exp_gradient, gradient)
    return estimate, gradient
