"""comparisons.agreement: the statistics a comparison reports, on data whose truth is known.

Bounds are 5σ of the quantity over the draws: mean z² of n values has standard deviation √(2/n) when the
reported errors are right; the fraction of p-values under 0.01 is binomial with p = 0.01.
"""

import numpy as np
import pytest
from scipy.stats import chi2

from conftest import make_model
from qkan_orch.backends import get_backend
from qkan_orch.backends.runner import run_plan
from qkan_orch.circuits import plan_for
from qkan_orch.cli.demo import demo_model
from qkan_orch.comparisons import agreement, independent_samples
from qkan_orch.models.functions import get_function

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


def test_samples_with_an_input_value_in_common_are_counted_once() -> None:
    grid = np.array([[a, b] for a in range(4) for b in range(4)], dtype=float)
    assert np.flatnonzero(independent_samples(grid)).tolist() == [0, 5, 10, 15]  # one per value of each column
    assert independent_samples(np.random.default_rng(0).uniform(-1, 1, (20, 3))).all()  # no value repeats
    assert independent_samples(np.array([[0.1, 0.2], [0.3, 0.2], [0.5, 0.6]])).tolist() == [True, False, True]
    assert independent_samples(np.zeros((3, 5, 2))).tolist() == [True, False, False]  # LSTM: h = 0 circuits shared
    assert independent_samples(grid, "hqkan").all()  # a Linear map of the row: every row differs
    repeated = np.array([[0.1, 0.2], [0.3, 0.2], [0.1, 0.2]])
    assert independent_samples(repeated, "hqkan").tolist() == [True, True, False]
    steps = np.random.default_rng(0).uniform(-1, 1, (4, 3, 2))
    steps[2, 0] = steps[0, 0]  # same first step: the same circuits there
    assert independent_samples(steps, "hqkan-lstm").tolist() == [True, True, False, True]
    y = np.random.default_rng(1).normal(size=(16, 2))
    found = agreement(y, np.ones_like(y), np.zeros_like(y), independent=independent_samples(grid))
    assert found.n == 32 and found.chi2_n == 8  # four samples × two outputs
    assert found.p_value == pytest.approx(chi2.sf(np.sum(y[[0, 5, 10, 15]] ** 2), 8))
    assert found.mean_z2 == pytest.approx(np.mean(y**2))  # every value: unbiased whatever they share


def test_ideal_runs_on_a_grid_give_uniform_p_values_over_samples_that_share_no_circuit() -> None:
    """The demo's model on its 8×8 grid, shot noise alone (``emulate:dm`` without noise; bench/agreement_calibration.py
    runs the same at length). Samples with an x value in common share that edge's circuit: counting all of them,
    p < 0.01 comes far more often than 1 %; counting the independent ones, p is uniform."""
    model, _ = demo_model()
    grid = get_function("sin_cos").grid(8).numpy()
    exact = run_plan(plan_for(model, grid), get_backend("exact")).outputs
    runs = [run_plan(plan_for(model, grid), get_backend("emulate:dm"), shots=4000, options={"noise": False, "seed": k})
            for k in range(DRAWS)]
    independent = independent_samples(grid)
    assert independent.sum() == 8
    p = np.array([agreement(r.outputs, r.stderr, exact, independent=independent).p_value for r in runs])
    assert abs(np.mean(p < 0.01) - 0.01) < 5 * np.sqrt(0.01 * 0.99 / DRAWS)
    assert np.mean(p) == pytest.approx(0.5, abs=5 * np.sqrt(1 / 12 / DRAWS))
    every = np.array([agreement(r.outputs, r.stderr, exact).p_value for r in runs])
    assert np.mean(every < 0.01) > 0.01 + 5 * np.sqrt(0.01 * 0.99 / DRAWS)  # why: shared circuits, correlated errors


@pytest.mark.parametrize("spec", [
    {"width": [2, 3, 2], "reps": 2},
    {"kind": "hqkan", "in_dim": 2, "out_dim": 2, "qkan": {"width": [3, 2], "reps": 2}},
    {"kind": "qkan-lstm", "in_dim": 2, "hidden": 2, "window": 3, "gate": {"reps": 1}},
    {"kind": "hqkan-lstm", "in_dim": 2, "hidden": 2, "window": 3, "latent": 2, "gate": {"reps": 1}},
], ids=lambda spec: spec.get("kind", "qkan"))
def test_the_samples_picked_share_no_circuit_in_any_round(spec: dict) -> None:
    """The compiler's own batches, round by round: no row (circuit) serves two picked samples. Inputs on a grid
    of 4 values with 4 rows repeated, so unpicked samples do share circuits."""
    model = make_model(**spec)
    values = np.linspace(-1, 1, 4)
    grid = np.array([[a, b] for a in values for b in values] * 2)[:20]
    x = grid if "window" not in spec else np.stack([np.roll(grid, k, axis=0) for k in range(spec["window"])], axis=1)
    picked = independent_samples(x, model.spec.kind)
    plan, exact = plan_for(model, x), get_backend("exact")
    state, shared = plan.initial_state(), 0
    while (batch := plan.next_batch(state)) is not None:
        users = np.zeros(batch.num_rows, dtype=int)  # picked samples each row serves
        everyone = np.zeros(batch.num_rows, dtype=int)
        for segment in batch.segments:
            rows = segment.slots.reshape(len(x), -1)
            for b in range(len(x)):
                served = np.unique(rows[b][rows[b] >= 0])
                everyone[served] += 1
                users[served] += picked[b]
        assert users.max() <= 1, f"round {state.rounds_done}: a circuit serves {users.max()} picked samples"
        shared = max(shared, everyone.max())
        state = plan.absorb(state, exact.submit(batch).result)
    assert shared > 1  # the unpicked do share: the check above could fail
    assert picked.sum() == {"qkan": 4, "hqkan": 16, "qkan-lstm": 1, "hqkan-lstm": 16}[model.spec.kind]
