"""Sequence data for the QKAN-LSTM models: built-in series, next-step windows, a split by time, and user CSVs.

The QKAN-LSTM paper (arXiv 2512.05049) evaluates on damped simple harmonic motion, Bessel functions and
telecom traffic; the first two are generated here so a user can train and compare without any file. Every
series stays inside [-1, 1] because a narrow QKAN sums a handful of bounded activations. numpy and scipy
only: the CLI reads and checks data before torch is loaded.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import special

from qkan_orch.models.errors import InputError

TEST_FRACTION = 0.2

# Damped SHM x(t) = e^{−γt} cos(ωt). ω = 1 with a step of 0.25 samples a period (2π) 25 times, so a window of
# 6–8 steps sees a quarter period: enough to tell phase and slope, not enough to copy a whole cycle.
# γ = 0.02 halves the amplitude every ~35 time units: over the default ~260 points (t ≤ 65) it falls to ~0.3,
# so the test windows (the last 20 %, in time) ask the model to follow a shrinking amplitude it has not seen,
# yet stay well above zero (a tiny amplitude would make any model's test MSE trivially small).
SHM_GAMMA, SHM_OMEGA, SHM_STEP = 0.02, 1.0, 0.25
# J0 and J1 oscillate with period → 2π for large x; 0.2 per point gives ~31 points per oscillation and
# ~8 oscillations over the default length, with the slow 1/√x decay that makes them harder than a sine.
BESSEL_STEP = 0.2


@dataclass(frozen=True)
class Series:
    """A built-in 1-D series: ``fn`` maps the sample positions ``step·k`` to values."""

    name: str
    formula: str
    step: float
    fn: Callable[[np.ndarray], np.ndarray]

    def __call__(self, length: int) -> np.ndarray:
        """The first ``length`` values, float64."""
        return self.fn(self.step * np.arange(length, dtype=np.float64))


SERIES = {
    s.name: s
    for s in (
        Series("damped_shm", f"e^(−{SHM_GAMMA}t)·cos({SHM_OMEGA}t), t = {SHM_STEP}k", SHM_STEP,
               lambda t: np.exp(-SHM_GAMMA * t) * np.cos(SHM_OMEGA * t)),
        Series("bessel_j0", f"J0(x), x = {BESSEL_STEP}k", BESSEL_STEP, special.j0),
        Series("bessel_j1", f"J1(x), x = {BESSEL_STEP}k", BESSEL_STEP, special.j1),
    )
}


def get_series(name: str) -> Series:
    if name not in SERIES:
        raise InputError("function", f"'{name}' is not a built-in sequence (choose from {', '.join(SERIES)})")
    return SERIES[name]


def windows(series: np.ndarray, window: int, horizon: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(N, window, 1) inputs and (N, 1) targets: window k is series[k : k+window], its target the value
    ``horizon`` steps after the window's last (series[k+window+horizon−1])."""
    if window < 1:
        raise InputError("window", f"must be ≥ 1, got {window}")
    if horizon < 1:
        raise InputError("horizon", f"must be ≥ 1, got {horizon}")
    series = np.asarray(series, dtype=np.float64).reshape(-1)
    count = series.size - window - horizon + 1
    if count < 1:
        raise InputError("window", f"a window of {window} steps with horizon {horizon} needs a series of at least "
                                   f"{window + horizon} values; this one has {series.size}")
    x = sliding_window_view(series[: count + window - 1], window)
    return x[:, :, None].copy(), series[window + horizon - 1:, None].copy()


def split_by_time(x: np.ndarray, y: np.ndarray, test_fraction: float = TEST_FRACTION
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): the last ``test_fraction`` of the windows (at least one) are the
    test set, nothing shuffled, so every test target lies after every training target (forecasting, not
    interpolation between seen points)."""
    if not 0.0 < test_fraction < 1.0:
        raise InputError("test_fraction", f"must be between 0 and 1, got {test_fraction}")
    test = max(1, round(test_fraction * len(x)))
    if test >= len(x):
        raise InputError("samples", f"{len(x)} windows leave none for training after {test} for test")
    return x[:-test], y[:-test], x[-test:], y[-test:]


def windows_from_table(data: np.ndarray, field: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """A user's table (``tables.parse_table``: CSV or .npy), one window per row with the target last, as
    (N, T, 1) inputs and (N, 1) targets."""
    if data.shape[0] == 0:
        raise InputError(field, "has no rows")
    if data.shape[1] < 2:
        raise InputError(field, f"has {data.shape[1]} column(s); a row is a window of ≥ 1 values, then its target")
    bad = ~np.isfinite(data)
    if bad.any():
        row, column = np.argwhere(bad)[0]
        raise InputError(field, f"row {row + 1}, column {column + 1} is {data[row, column]}; values must be finite")
    return data[:, :-1, None].copy(), data[:, -1:].copy()

