"""The mathematics of mitigation, on synthetic results: extrapolation, read-out correction, standard errors,
settings and quotes. No circuit runs here, so exact data can be checked to 1e-12.
"""

import math

import numpy as np
import pytest

from qkan_orch.backends import get_backend
from qkan_orch.backends.base import round_bytes
from qkan_orch.circuits import BatchResult
from qkan_orch.circuits.packing import binomial_p0
from qkan_orch.mitigation import MitigatedBackend, Mitigation, mitigated
from qkan_orch.mitigation.expansion import Expansion, reduce
from qkan_orch.mitigation.extrapolation import coefficients, extrapolate
from qkan_orch.models import InputError

SCALE_SETS = [(1, 3), (1, 3, 5), (1, 3, 5, 7), (1, 5, 9, 13), (1, 3, 5, 7, 9, 11, 13)]


@pytest.mark.parametrize("scales", SCALE_SETS)
def test_coefficients_are_the_fitted_polynomials_at_zero(scales: tuple[int, ...], rng: np.random.Generator) -> None:
    lam = np.asarray(scales, dtype=np.float64)
    data = rng.uniform(0.0, 1.0, size=(5, lam.size))
    richardson, linear = coefficients(lam, "richardson"), coefficients(lam, "linear")
    through_all = [np.polyval(np.polyfit(lam, y, lam.size - 1), 0.0) for y in data]
    line = [np.polyfit(lam, y, 1)[1] for y in data]
    assert np.allclose(data @ richardson, through_all, rtol=0, atol=1e-8)  # polyfit's own conditioning at degree 6
    assert np.allclose(data @ linear, line, rtol=0, atol=1e-12)
    assert abs(richardson.sum() - 1.0) < 1e-12 and abs(linear.sum() - 1.0) < 1e-12


def test_richardson_coefficients_in_closed_form() -> None:
    assert np.allclose(coefficients(np.array([1.0, 3.0]), "richardson"), [1.5, -0.5], atol=1e-15)
    assert np.allclose(coefficients(np.array([1.0, 3.0, 5.0]), "richardson"), [15 / 8, -10 / 8, 3 / 8], atol=1e-15)


def exponential_rows(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p0(λ) = ½ + A·e^{−kλ} above and below ½, and the A each row must recover."""
    amplitude = np.array([0.45, 0.3, -0.2, -0.48, 0.05])
    decay = np.array([0.02, 0.1, 0.07, 0.3, 0.01])
    return 0.5 + amplitude[:, None] * np.exp(-decay[:, None] * scales[None, :]), amplitude


@pytest.mark.parametrize("scales", [(1, 3), (1, 3, 5), (1, 5, 9, 13)])
def test_exponential_recovers_decaying_data_exactly(scales: tuple[int, ...]) -> None:
    lam = np.asarray(scales, dtype=np.float64)
    values, amplitude = exponential_rows(lam)
    estimate, _ = extrapolate(lam, values, np.full(values.shape, 1e-4), "exponential")
    assert np.max(np.abs(estimate - (0.5 + amplitude))) < 1e-12


def test_exponential_falls_back_to_linear_near_one_half() -> None:
    lam = np.array([1.0, 3.0, 5.0])
    sigma = 1e-3
    values = np.array([
        [0.7, 0.6, 0.5 + 2 * sigma],  # last point 2σ above ½: inside the 3σ margin
        [0.3, 0.4, 0.5 - 2.9 * sigma],  # below ½, still inside
        [0.3, 0.45, 0.55],  # crosses ½
        [0.7, 0.6, 0.5 + 3.1 * sigma],  # just outside the margin: exponential
    ])
    estimate, gradient = extrapolate(lam, values, np.full(values.shape, sigma), "exponential")
    linear = coefficients(lam, "linear")
    assert np.allclose(estimate[:3], values[:3] @ linear, rtol=0, atol=1e-15)
    assert np.allclose(gradient[:3], linear, rtol=0, atol=1e-15)
    assert abs(estimate[3] - values[3] @ linear) > 1e-2  # the fit did not fall back


@pytest.mark.parametrize("method", ["linear", "richardson", "exponential"])
def test_gradients_match_finite_differences(method: str, rng: np.random.Generator) -> None:
    lam = np.array([1.0, 3.0, 5.0, 7.0])
    values, _ = exponential_rows(lam)
    values = values + rng.normal(0.0, 0.003, size=values.shape)  # not exactly exponential
    stderr = np.full(values.shape, 1e-4)
    gradient = extrapolate(lam, values, stderr, method)[1]
    h = 1e-6
    for s in range(lam.size):  # perturb one scale of every row at once (rows are independent)
        step = np.zeros_like(values)
        step[:, s] = h
        numeric = (extrapolate(lam, values + step, stderr, method)[0]
                   - extrapolate(lam, values - step, stderr, method)[0]) / (2 * h)
        assert np.allclose(gradient[:, s], numeric, rtol=0, atol=1e-7), (method, s)


# ---------------------------------------------------------------- read-out correction and ZNE through reduce

E0 = np.array([0.02, 0.05, 0.1])  # P(1 | 0) per copy
E1 = np.array([0.03, 0.01, 0.07])  # P(0 | 1) per copy
SHOTS = 1000


def synthetic(true: np.ndarray, scales: tuple[int, ...], repeats: int, metadata: dict | None = None
              ) -> tuple[Expansion, BatchResult]:
    """Exact measured p0 of an expanded round: row r on copy r mod W reads m = e1 + (1 − e0 − e1)·p0, and each
    calibration circuit reads 1 − e0 / e1 off by ±δ per repeat, which the mean over repeats cancels."""
    rows, width = true.shape[0], E0.size
    copy = np.arange(rows) % width
    measured = E1[copy, None] + (1.0 - E0 - E1)[copy, None] * true  # (N, S)
    offsets = np.linspace(-0.01, 0.01, repeats)[:, None] if repeats > 1 else np.zeros((1, 1))
    prepared_0 = (1.0 - E0[None, :] + offsets).reshape(-1)  # copy-fastest
    prepared_1 = (E1[None, :] - offsets).reshape(-1)
    p0 = np.concatenate([measured.T.reshape(-1), prepared_0, prepared_1])
    stderr = np.sqrt(np.clip(p0 * (1 - p0), 1e-6, None) / SHOTS)
    result = BatchResult(p0=p0, p0_stderr=stderr, shots=SHOTS, executions=1, metadata=dict(metadata or {}))
    return Expansion(rows, width, scales, repeats), result


def expected_matrices() -> list[list[list[float]]]:
    return [[[1 - e0, e1], [e0, 1 - e1]] for e0, e1 in zip(E0, E1, strict=True)]


@pytest.mark.parametrize("repeats", [1, 3])
def test_readout_correction_recovers_the_true_p0(repeats: int, rng: np.random.Generator) -> None:
    true = rng.uniform(0.0, 1.0, size=(7, 1))
    layout, result = synthetic(true, (1,), repeats)
    out = reduce(layout, Mitigation(readout=True), result)
    assert np.max(np.abs(out.p0 - true[:, 0])) < 1e-12
    assert np.array_equal(out.raw_p0, result.p0[:7]) and np.array_equal(out.raw_p0_stderr, result.p0_stderr[:7])
    readout = out.metadata["mitigation"]["readout"]
    assert [r["copy"] for r in readout] == [0, 1, 2] and all(r["qubit"] is None for r in readout)
    assert np.allclose([r["matrix"] for r in readout], expected_matrices(), rtol=0, atol=1e-12)
    assert {r["shots"] for r in readout} == {SHOTS * repeats}
    assert out.metadata["mitigation"]["method"] == "readout" and "placement" not in out.metadata


def test_readout_matrices_carry_the_physical_qubits() -> None:
    true = np.linspace(0.05, 0.95, 6)[:, None]
    placement = {"qubits": [4, 9, 2], "score": 0.1}
    layout, result = synthetic(true, (1,), 2, {"placement": placement})
    out = reduce(layout, Mitigation(readout=True), result)
    readout = out.metadata["mitigation"]["readout"]
    assert [r["qubit"] for r in readout] == [4, 9, 2]
    assert out.metadata["placement"] == {**placement, "readout": readout}
    assert "readout" not in placement  # the backend's own metadata is not modified
    # a fake device's qubits (aer:fake_*) name them too, without inventing a placement
    layout, result = synthetic(true, (1,), 2, {"physical_qubits": [0, 8, 1]})
    out = reduce(layout, Mitigation(readout=True), result)
    assert [r["qubit"] for r in out.metadata["mitigation"]["readout"]] == [0, 8, 1] and "placement" not in out.metadata


@pytest.mark.parametrize(("extrapolation", "scales", "degree"),
                         [("linear", (1, 3, 5), 1), ("richardson", (1, 3, 5), 2), ("richardson", (1, 3, 5, 7), 3)])
def test_readout_and_zne_recover_polynomial_noise_exactly(extrapolation: str, scales: tuple[int, ...], degree: int,
                                                          rng: np.random.Generator) -> None:
    """True p0(λ) a polynomial of the degree the method fits exactly: reduce returns p0(0) after correction."""
    lam = np.asarray(scales, dtype=np.float64)
    coeffs = rng.uniform(-0.02, 0.02, size=(8, degree))
    at_zero = rng.uniform(0.2, 0.8, size=8)
    true = at_zero[:, None] + sum(coeffs[:, d, None] * lam[None, :] ** (d + 1) for d in range(degree))
    layout, result = synthetic(true, scales, 2)
    mitigation = Mitigation(readout=True, scale_factors=scales, extrapolation=extrapolation)
    out = reduce(layout, mitigation, result)
    assert np.max(np.abs(out.p0 - at_zero)) < 1e-12
    assert np.array_equal(out.raw_p0, result.p0[:8])  # the scale-1 rows as read
    assert out.metadata["mitigation"] | {"readout": None} == {
        "method": "readout+zne", "calibration_shots": 10_000, "scale_factors": list(scales),
        "extrapolation": extrapolation, "readout": None}


MC_REPS = 4000
MC_SETTINGS = [
    Mitigation(readout=True),
    Mitigation(scale_factors=(1, 3, 5)),
    Mitigation(readout=True, scale_factors=(1, 3, 5)),
    Mitigation(readout=True, scale_factors=(1, 3, 5), extrapolation="richardson"),
]


@pytest.mark.parametrize("mitigation", MC_SETTINGS, ids=lambda m: f"{m.method}-{m.extrapolation}")
def test_reported_stderr_matches_the_spread_of_the_estimate(mitigation: Mitigation) -> None:
    """Monte Carlo over R = 4000 independent rounds, each its own copy (row r on copy r, with its own calibration),
    so one ``reduce`` call holds them all.

    Bound: for R roughly normal draws the sample standard deviation s has relative standard error
    √(1/(2(R−1))) (the binomial's excess kurtosis at 2000 shots adds < 1e-3), so |s/σ − 1| ≤ 5·√(1/(2R)) ≈ 0.056
    per configuration, with σ² the mean variance ``reduce`` reports (its per-round spread averages out over R).
    The mean must lie within 5σ/√R of the noise-free value of the same estimator, c·p(λ) after correction.
    """
    shots, repeats = 2000, 2
    configs = [(0.15, 0.02, 0.05), (0.5, 0.04, 0.03), (0.85, 0.2, 0.1)]  # (p0 at λ = 0, e0, e1)
    lam = np.asarray(mitigation.scale_factors, dtype=np.float64)
    width = MC_REPS * len(configs)  # copy r serves round r // 3 of configuration r % 3
    p0_true, e0, e1 = (np.tile(np.array(v), MC_REPS) for v in zip(*configs, strict=True))
    if not mitigation.readout:
        e0, e1 = np.zeros(width), np.zeros(width)
    decayed = 0.5 + (p0_true[:, None] - 0.5) * np.exp(-0.08 * lam[None, :])  # (N, S)
    measured = e1[:, None] + (1.0 - e0 - e1)[:, None] * decayed
    gen = np.random.default_rng(2024 + len(lam))
    zeros = [gen.binomial(shots, measured.T).reshape(-1)]
    if mitigation.readout:
        zeros += [gen.binomial(shots, np.tile(1.0 - e0, repeats)), gen.binomial(shots, np.tile(e1, repeats))]
    p0, stderr = binomial_p0(np.concatenate(zeros), shots)
    layout = Expansion(width, width, mitigation.scale_factors, repeats if mitigation.readout else 0)
    out = reduce(layout, mitigation, BatchResult(p0=p0, p0_stderr=stderr, shots=shots))
    c = coefficients(lam, mitigation.extrapolation) if lam.size > 1 else np.ones(1)
    estimates, reported = out.p0.reshape(MC_REPS, len(configs)), out.p0_stderr.reshape(MC_REPS, len(configs))
    spread = estimates.std(axis=0, ddof=1)
    sigma = np.sqrt(np.mean(np.square(reported), axis=0))
    bound = 5 * math.sqrt(1 / (2 * MC_REPS))
    assert np.all(np.abs(spread / sigma - 1) <= bound), f"s/σ = {spread / sigma}, bound 1 ± {bound:.3f}"
    noiseless = decayed[:len(configs)] @ c
    assert np.all(np.abs(estimates.mean(axis=0) - noiseless) <= 5 * sigma / math.sqrt(MC_REPS)), "mean beyond 5σ/√R"


# ---------------------------------------------------------------- settings


@pytest.fixture(scope="module")
def caps() -> dict:
    return {name: get_backend(name).capabilities()
            for name in ("aer", "aer:fake_melbourne", "braket:local_dm", "exact", "pennylane:default.qubit")}


@pytest.mark.parametrize(("value", "want"), [
    ("none", Mitigation()),
    ("readout", Mitigation(readout=True)),
    ("zne", Mitigation(scale_factors=(1, 3, 5))),
    ("readout+zne", Mitigation(readout=True, scale_factors=(1, 3, 5))),
    ({}, Mitigation(readout=True)),
    ({"method": "none", "scale_factors": [1, 3]}, Mitigation()),
    ({"scale_factors": [5, 1, 3]}, Mitigation(readout=True, scale_factors=(1, 3, 5))),
    ({"method": "zne", "scale_factors": [1, 13], "extrapolation": "exponential"},
     Mitigation(scale_factors=(1, 13), extrapolation="exponential")),
    ({"method": "readout", "calibration_shots": 2500, "scale_factors": [1, 3]},
     Mitigation(readout=True, calibration_shots=2500)),
    ({"method": "readout+zne", "scale_factors": [1, 3, 5, 7, 9, 11, 13], "extrapolation": "richardson",
      "calibration_shots": 1}, Mitigation(True, (1, 3, 5, 7, 9, 11, 13), "richardson", 1)),
])
def test_parse_settings(value: object, want: Mitigation, caps: dict) -> None:
    got = Mitigation.parse(value, caps["aer"])
    assert got == want
    assert Mitigation.parse(got.to_json(), caps["aer"]) == got  # the stored form reads back as itself


def test_defaults_follow_the_backend_kind(caps: dict) -> None:
    for name in ("aer:fake_melbourne", "braket:local_dm"):
        assert caps[name].kind == "noisy simulator" and Mitigation.parse(None, caps[name]) == Mitigation(readout=True)
    for name in ("aer", "exact", "pennylane:default.qubit"):
        assert not Mitigation.parse(None, caps[name]).active
    assert Mitigation.parse("none", caps["exact"]) == Mitigation()
    backend = get_backend("aer")
    assert mitigated(backend, Mitigation()) is backend
    assert isinstance(mitigated(backend, Mitigation(readout=True)), MitigatedBackend)


@pytest.mark.parametrize(("value", "field"), [
    ({"scale_factors": [1, 2]}, "mitigation.scale_factors"),
    ({"scale_factors": [1, 3, 4]}, "mitigation.scale_factors"),
    ({"scale_factors": [0, 1]}, "mitigation.scale_factors"),
    ({"scale_factors": [1, -3]}, "mitigation.scale_factors"),
    ({"scale_factors": [1, 15]}, "mitigation.scale_factors"),  # above MAX_FOLD
    ({"scale_factors": [1, 3, 5, 7, 9, 11, 13, 13]}, "mitigation.scale_factors"),  # more than 7
    ({"scale_factors": [1, 3, 3]}, "mitigation.scale_factors"),
    ({"scale_factors": [1, 3.0]}, "mitigation.scale_factors"),
    ({"scale_factors": [1, "3"]}, "mitigation.scale_factors"),
    ({"scale_factors": [True, 3]}, "mitigation.scale_factors"),
    ({"scale_factors": [3, 5]}, "mitigation.scale_factors"),  # no scale 1
    ({"scale_factors": [1]}, "mitigation.scale_factors"),
    ({"scale_factors": []}, "mitigation.scale_factors"),
    ({"scale_factors": "1,3"}, "mitigation.scale_factors"),
    ({"method": "zne", "extrapolation": "cubic"}, "mitigation.extrapolation"),
    ("zne+readout", "mitigation"),
    ("ZNE", "mitigation"),
    (5, "mitigation"),
    ({"method": "all"}, "mitigation.method"),
    ({"shots": 100}, "mitigation.shots"),
    ({"calibration_shots": 0}, "mitigation.calibration_shots"),
    ({"calibration_shots": True}, "mitigation.calibration_shots"),
    ({"calibration_shots": 10**8}, "mitigation.calibration_shots"),
])
def test_bad_settings_name_their_field(value: object, field: str, caps: dict) -> None:
    with pytest.raises(InputError) as err:
        Mitigation.parse(value, caps["aer"])
    assert err.value.field == field


@pytest.mark.parametrize("value", ["readout", "zne", "readout+zne", {"scale_factors": [1, 3]}])
def test_an_analytic_backend_refuses_mitigation(value: object, caps: dict) -> None:
    with pytest.raises(InputError) as err:
        Mitigation.parse(value, caps["exact"])
    assert err.value.field == "mitigation"
    with pytest.raises(InputError) as err:
        Mitigation.parse(value, caps["exact"], field="job.mitigation")
    assert err.value.field == "job.mitigation"


# ---------------------------------------------------------------- quotes


@pytest.mark.parametrize(("value", "scales", "repeats"), [
    ("readout+zne", 3, 10),  # calibration_shots 10 000 at 1000 shots: 10 circuits per preparation
    ({"method": "readout", "calibration_shots": 2500}, 1, 3),
    ("zne", 3, 0),
])
def test_estimate_counts_every_scale_and_the_calibration(value: object, scales: int, repeats: int) -> None:
    plain = get_backend("aer:fake_melbourne")
    backend = mitigated(plain, Mitigation.parse(value, plain.capabilities()))
    rows, shots, pack, columns = [10, 7, 0], 1000, 4, 5
    quote = backend.estimate(rows, shots, pack=pack, columns=columns)
    base = plain.estimate(rows, shots, pack=pack, columns=columns)
    executions = sum(scales * math.ceil(r / pack) + (2 * repeats if r else 0) for r in rows)
    assert quote.executions == executions and quote.shots == executions * shots
    assert base.executions == sum(math.ceil(r / pack) for r in rows) == 5 and base.shots == 5 * shots
    assert quote.tasks == base.tasks == 2 and quote.cost == base.cost == 0.0
    assert quote.peak_bytes == round_bytes(scales * 10 + 2 * repeats * pack, columns)
    assert base.peak_bytes == round_bytes(10, columns)
