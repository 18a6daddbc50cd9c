"""Local backends against the exact simulator, with bounds stated from the shot count.

Bound per row: |p̂ − p| ≤ 5σ + 1/n with σ = √(p(1−p)/n) from the exact p and n
shots (5σ two-sided is a 6e-7 tail per row for a normal; the 1/n one-count
slack covers the binomial's lattice near p ∈ {0, 1}).
"""

import math

import numpy as np
import pytest

from conftest import make_inputs, make_model
from qkan_orch.backends import get_backend
from qkan_orch.backends.exact import exact_p0
from qkan_orch.circuits import ActivationBatch, Segment, Template, compile_layer
from qkan_orch.circuits.packing import edge_qubits
from qkan_orch.models import InputError

SHOTS = 10_000
NOISELESS = [
    ("aer", {"seed": 7}),
    ("aer:fake_sherbrooke", {"noise": False, "seed": 7}),
    ("braket:local", {}),
    ("braket:local_dm", {"noise": False}),
    ("pennylane:default.qubit", {"seed": 7}),
    ("pennylane:lightning.qubit", {}),
    ("pennylane:braket.local.qubit", {"device_options": {"backend": "braket_sv"}}),  # a plugin device
]


def statistical_batch() -> ActivationBatch:
    model = make_model(width=[2, 3], reps=2, preact_trainable=True)
    return compile_layer(model.layers[0], make_inputs(8, 2, seed=3))


def within_bound(p_hat: np.ndarray, p: np.ndarray, shots: int, scale: float = 1.0) -> np.ndarray:
    sigma = np.sqrt(p * (1 - p) / shots)
    return np.abs(p_hat - p) <= scale * 5 * sigma + 1.0 / shots


def deterministic_batch(pattern: list[int]) -> ActivationBatch:
    """rpz, reps 1: H·RY(−π/2) = identity on |0⟩ up to phase, so RY(π·bit) makes p0 = 1 − bit."""
    params = np.array([[-math.pi / 2, 0.3 * k, math.pi * bit] for k, bit in enumerate(pattern)])
    slots = np.arange(len(pattern)).reshape(-1, 1, 1)
    return ActivationBatch(Template("rpz_encoding", 1), params, (Segment("bits", slots),), "z")


@pytest.mark.parametrize(("name", "options"), NOISELESS)
def test_noiseless_backends_agree_with_exact_within_5_sigma(name: str, options: dict) -> None:
    batch = statistical_batch()
    result = get_backend(name).submit(batch, shots=SHOTS, options=options).result
    p = exact_p0(batch)
    assert result.shots == SHOTS and result.p0.shape == p.shape
    ok = within_bound(result.p0, p, SHOTS)
    assert ok.all(), f"{name}: rows {np.flatnonzero(~ok)} outside 5σ"
    assert np.all(result.p0_stderr > 0)


@pytest.mark.parametrize(
    ("name", "pack"),
    [("aer", 1), ("aer", 4), ("aer", 16), ("aer:fake_sherbrooke", 4), ("braket:local", 5), ("braket:local_dm", 3),
     ("pennylane:default.qubit", 7)],
)
def test_packed_rows_land_on_their_own_qubits(name: str, pack: int) -> None:
    pattern = [1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 1]
    options = {"noise": False} if name in ("aer:fake_sherbrooke", "braket:local_dm") else {}
    result = get_backend(name).submit(deterministic_batch(pattern), shots=50, pack=pack, options=options).result
    assert result.p0.tolist() == [1.0 - bit for bit in pattern]
    assert result.executions == -(-len(pattern) // pack)


def test_an_edge_is_placed_where_most_of_its_samples_ran() -> None:
    # rows run on copy r % 2, copy 0 on qubit 7 and copy 1 on qubit 3; −1: the edge did not run for that sample
    slots = np.array([[[0, -1, 5]], [[2, -1, 3]], [[1, -1, 4]]])  # (3 samples, 1 out, 3 in)
    qubit, share = edge_qubits(slots, [7, 3])
    assert qubit.tolist() == [[7, -1, 3]] and share[0].tolist() == pytest.approx([2 / 3, 0.0, 2 / 3])
    assert edge_qubits(slots, [11]).tolist() == [[[11, -1, 11]], [[1.0, 0.0, 1.0]]]


def test_packing_widths_are_statistically_equal_on_aer() -> None:
    batch = statistical_batch()
    p = exact_p0(batch)
    backend = get_backend("aer")
    results = {w: backend.submit(batch, shots=SHOTS, pack=w, options={"seed": w}).result for w in (1, 4, 16)}
    for width, result in results.items():
        assert within_bound(result.p0, p, SHOTS).all(), f"W={width}"
        assert result.executions == -(-batch.num_rows // width)
    # two independent estimates: the difference has variance 2σ²
    assert within_bound(results[1].p0 - results[16].p0 + p, p, SHOTS, scale=math.sqrt(2)).all()
    assert within_bound(results[4].p0 - results[16].p0 + p, p, SHOTS, scale=math.sqrt(2)).all()


@pytest.mark.parametrize("name", ["aer:fake_melbourne", "braket:local_dm"])
def test_noise_visibly_moves_the_result(name: str) -> None:
    """Mean squared z-score over N rows: ≈ 1 ± √(2/N) without noise; noise pushes it far above 3."""
    batch = statistical_batch()
    p = exact_p0(batch)
    result = get_backend(name).submit(batch, shots=SHOTS).result
    z = (result.p0 - p) / np.sqrt(np.maximum(p * (1 - p), 1 / SHOTS) / SHOTS)
    assert np.mean(z**2) > 3.0
    quiet = get_backend(name).submit(batch, shots=SHOTS, options={"noise": False}).result
    assert within_bound(quiet.p0, p, SHOTS).all()


def test_exact_is_analytic() -> None:
    batch = statistical_batch()
    result = get_backend("exact").submit(batch).result
    assert np.array_equal(result.p0, exact_p0(batch)) and not result.p0_stderr.any() and result.shots == 0


@pytest.mark.parametrize("name", ["exact", "aer", "aer:fake_sherbrooke", "braket:local", "pennylane:default.qubit"])
def test_a_batch_with_no_rows_runs_nothing(name: str) -> None:
    model = make_model(width=[2, 2], reps=1)
    model.layers[0].mask.data.zero_()
    batch = compile_layer(model.layers[0], make_inputs(3, 2))
    result = get_backend(name).submit(batch, shots=None if name == "exact" else 100).result
    assert batch.num_rows == 0 and result.p0.shape == (0,) and result.executions == 0


@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("aer", {"shots": 0}, "shots"),
        ("aer", {"shots": -5}, "shots"),
        ("aer", {"shots": 2.5}, "shots"),
        ("aer", {"shots": True}, "shots"),
        ("aer", {"shots": None}, "shots"),
        ("braket:local", {"shots": 10**9}, "shots"),
        ("aer", {"shots": 10, "pack": 0}, "pack"),
        ("aer", {"shots": 10, "pack": 25}, "pack"),
        ("braket:local_dm", {"shots": 10, "pack": 5}, "pack"),
        ("exact", {"pack": 2}, "pack"),
        ("aer", {"shots": 10, "options": {"twirl": True}}, "options.twirl"),
        ("braket:local_dm", {"shots": 10, "options": {"depolarizing": 2.0}}, "options.depolarizing"),
    ],
)
def test_bad_settings_are_refused_before_running(name: str, kwargs: dict, field: str) -> None:
    with pytest.raises(InputError) as err:
        get_backend(name).submit(statistical_batch(), **kwargs)
    assert err.value.field == field


@pytest.mark.parametrize("name", ["", "qpu", "aer:fake_nowhere", "pennylane:not.a.device", "braket:cloud"])
def test_unknown_backends_are_refused(name: str) -> None:
    with pytest.raises(InputError) as err:
        get_backend(name)
    assert err.value.field == "backend"


def test_cloud_plugin_devices_fail_as_provider_errors_and_wait_on_their_provider_queue() -> None:
    """braket.aws.qubit without region or credentials: a provider or input error naming the device, not a crash."""
    from qkan_orch.backends.base import TransientBackendError
    from qkan_orch.backends.queues import queue_for
    from qkan_orch.models.errors import InputError

    backend = get_backend("pennylane:braket.aws.qubit")
    with pytest.raises((TransientBackendError, InputError), match=r"braket\.aws\.qubit"):
        backend.submit(statistical_batch(), shots=10, options={"device_options": {
            "device_arn": "arn:aws:braket:eu-north-1::device/qpu/iqm/Garnet"}})
    assert queue_for("pennylane:braket.aws.qubit") == "braket"
    assert queue_for("pennylane:braket.local.qubit") == "local"
    assert queue_for("ibm:fake_sherbrooke") == queue_for("ibm:ibm_torino") == "ibm"
    assert queue_for("braket:arn:aws:braket:eu-north-1::device/qpu/iqm/Garnet") == "braket"
