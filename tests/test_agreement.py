"""comparisons.agreement: the statistics a comparison reports, on data whose truth is known.

Bounds are 5σ of the quantity over the draws: mean z² of n values has standard deviation √(2/n) when the
reported errors are right; the fraction of p-values under 0.01 is binomial with p = 0.01.
"""

import numpy as np
import pytest

from qkan_orch.comparisons import agreement

DRAWS, N = 400, 50


def test_errors_the_outputs_report_give_mean_z2_one_and_uniform_p_values() -> None:
    rng = np.random.default_rng(1)
    results = []
    for _ in range(DRAWS):
        truth = rng.uniform(-1, 1, N)
        sy, sr = rng.uniform(0.01, 0.05, N), rng.uniform(0.0, 0.02, N)
        y, r = truth + rng.normal(0, sy), truth + rng.normal(0, sr)
        results.append(agreement(y, sy, r, sr))
    mean_z2 = np.mean([a.mean_z2 for a in results])
    assert abs(mean_z2 - 1) < 5 * np.sqrt(2 / N) / np.sqrt(DRAWS)
    low = np.mean([a.p_value < 0.01 for a in results])
    assert abs(low - 0.01) < 5 * np.sqrt(0.01 * 0.99 / DRAWS)
    assert np.mean([a.p_value for a in results]) == pytest.approx(0.5, abs=5 * np.sqrt(1 / 12 / DRAWS))


def test_noise_the_errors_do_not_report_gives_a_tiny_p_value_and_the_shrink_as_slope() -> None:
    rng = np.random.default_rng(2)
    truth = rng.uniform(-1, 1, 200)
    se = np.full(200, 0.01)
    shrunk = agreement(0.9 * truth + rng.normal(0, se), se, truth)  # depolarising: every value towards 0
    assert shrunk.p_value < 1e-3 and shrunk.mean_z2 > 10
    sxx = np.sum((truth - truth.mean()) ** 2)  # least squares: 5σ of slope and intercept from the noise 0.01
    assert shrunk.slope == pytest.approx(0.9, abs=5 * 0.01 / np.sqrt(sxx))
    assert abs(shrunk.intercept) < 5 * 0.01 * np.sqrt(1 / 200 + truth.mean() ** 2 / sxx)


def test_the_plain_statistics_and_the_analytic_edge_cases() -> None:
    y, r, se = np.array([[0.5], [0.0], [-0.2]]), np.array([[0.4], [0.0], [0.0]]), np.array([[0.1], [0.1], [0.1]])
    a = agreement(y, se, r)
    assert a.n == 3 and a.rmse == pytest.approx(np.sqrt((0.01 + 0 + 0.04) / 3))
    assert a.max_error == pytest.approx(0.2) and a.sigma == pytest.approx(0.1)
    assert a.mean_z2 == pytest.approx((1 + 0 + 4) / 3)
    same = agreement(r, np.zeros(3), r)  # exact against exact: nothing to explain
    assert same.p_value == 1.0 and same.mean_z2 == 0 and same.slope == pytest.approx(1)
    differ = agreement(y, np.zeros(3), r)  # analytic and different: no error explains it
    assert differ.p_value == 0.0 and differ.mean_z2 == np.inf
    assert np.isnan(agreement(y, se, np.ones(3)).slope)  # a constant reference has no slope
    with pytest.raises(ValueError):
        agreement(y, se, r[:2])
