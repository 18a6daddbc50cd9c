"""``emulate:<device>`` against the simulators it emulates, with every statistical bound named.

Per row, with n shots and σ = √(p(1−p)/n) from the emulator's exact p̂0: |p_sampled − p̂0| ≤ 5σ + 1/n (a
two-sided 5σ tail is 6e-7 per row for a normal; the one-count slack covers the binomial's lattice near 0 and
1). Over N rows the mean squared z-score is 1 ± √(2/N) when the emulator's p̂0 is the distribution's mean;
we require ≤ 1 + 5·√(2/N), which a systematic bias of a fraction of σ on many rows would break.
Exact comparisons (noiseless limit, Braket's exact density matrix, Aer's channels) are to 1e-12.
"""

import math
import warnings

import numpy as np
import pytest

from qkan_orch.backends import get_backend
from qkan_orch.backends.exact import exact_p0
from qkan_orch.circuits import ActivationBatch, Segment, Template
from qkan_orch.circuits.packing import pack_params
from qkan_orch.models import InputError

AER_SHOTS = 100_000
ANSATZE = ("pz_encoding", "rpz_encoding", "real")


def random_batch(template: Template, rows: int, seed: int, readout: str = "z") -> ActivationBatch:
    params = np.random.default_rng(seed).uniform(-math.pi, math.pi, (rows, template.num_params))
    return ActivationBatch(template, params, (Segment("rows", np.arange(rows).reshape(-1, 1, 1)),), readout)


def every_circuit(rows_each: int, seed: int = 0) -> tuple[ActivationBatch, ...]:
    """One part per (ansatz, reps 1–4), read-outs alternating: 12 parts that run as one submission."""
    parts, k = [], 0
    for ansatz in ANSATZE:
        for reps in range(1, 5):
            parts.append(random_batch(Template(ansatz, reps), rows_each, seed + k, ("z", "fast")[k % 2]))
            k += 1
    return tuple(parts)


def five_sigma(sampled: np.ndarray, p: np.ndarray, shots: int) -> tuple[np.ndarray, float]:
    """Per-row pass/fail of |p̂ − p| ≤ 5σ + 1/n, and the largest |Δ|/σ (σ floored at one count)."""
    sigma = np.sqrt(p * (1 - p) / shots)
    ok = np.abs(sampled - p) <= 5 * sigma + 1.0 / shots
    return ok, float(np.max(np.abs(sampled - p) / np.maximum(sigma, 1.0 / shots)))


def mean_z2_bound(rows: int) -> float:
    return 1 + 5 * math.sqrt(2 / rows)


@pytest.mark.parametrize("device", ["fake_melbourne", "fake_sherbrooke"])
def test_emulator_agrees_with_aer_in_distribution(device: str) -> None:
    """≥ 1000 rows of every ansatz, reps 1–4 and both read-outs, one Aer submission, both at the default packing
    (4 copies: Aer's cheapest per row at 10⁵ shots) on the same qubits."""
    parts = every_circuit(rows_each=84)
    rows = sum(p.num_rows for p in parts)
    aer = get_backend(f"aer:{device}").submit(parts, shots=AER_SHOTS, options={"seed": 11}).result
    emulated = get_backend(f"emulate:{device}").submit(parts).result
    assert rows >= 1000 and aer.qubits == emulated.qubits and emulated.shots == 0
    assert not emulated.p0_stderr.any()
    ok, worst = five_sigma(aer.p0, emulated.p0, AER_SHOTS)
    assert ok.all(), f"{device}: rows {np.flatnonzero(~ok)} outside 5σ (max {worst:.2f}σ)"
    sigma = np.sqrt(np.maximum(emulated.p0 * (1 - emulated.p0), 1 / AER_SHOTS) / AER_SHOTS)
    assert np.mean(((aer.p0 - emulated.p0) / sigma) ** 2) <= mean_z2_bound(rows)
    # and the noise is there: against the noiseless p0, Aer's counts are far outside the same bound
    ideal = np.concatenate([exact_p0(p) for p in parts])
    assert np.mean(((aer.p0 - ideal) / sigma) ** 2) > 3 * mean_z2_bound(rows)


def test_aer_channels_are_the_emulators_channels() -> None:
    """Each qubit's sx/x noise as Aer's device model builds it (its Pauli-transfer matrix) and read-out matrix."""
    from qiskit.quantum_info import PTM
    from qiskit_aer.noise.device.models import basic_device_gate_errors, basic_device_readout_errors

    from qkan_orch.backends.emulator_noise import ibm_noise
    from qkan_orch.backends.qiskit_common import best_qubits, compact_target, fake_backend

    for device in ("fake_melbourne", "fake_sherbrooke"):
        target = fake_backend(device).target
        qubits = best_qubits(target, 8)
        compact = compact_target(target, qubits)
        noise = ibm_noise(compact, qubits)
        checked = 0
        for name, (w,), error in basic_device_gate_errors(None, target=compact):
            if name == "reset":  # relaxes during a reset, which no edge circuit contains
                continue
            channel = noise.gates[name]
            ours = np.zeros((4, 4))
            ours[0, 0], ours[1, 1] = 1.0, channel.transverse[w]
            ours[2, 2], ours[3, 3], ours[3, 0] = channel.transverse[w], channel.longitudinal[w], channel.offset[w]
            np.testing.assert_allclose(ours, PTM(error.to_quantumchannel()).data, atol=1e-12, err_msg=name)
            checked += name in ("sx", "x")
        assert checked == 16
        for (w,), error in basic_device_readout_errors(None, target=compact):
            assert error.probabilities[0, 1] == pytest.approx(noise.p1_given_0[w], abs=1e-15)
            assert error.probabilities[1, 0] == pytest.approx(noise.p0_given_1[w], abs=1e-15)


def test_dm_equals_braket_exact_density_matrix() -> None:
    """emulate:dm and Braket's own density-matrix simulator (shots=0, exact probabilities) on the same program."""
    from braket.circuits import Noise
    from braket.devices import LocalSimulator

    from qkan_orch.backends.braket_local import NOISY_GATES
    from qkan_orch.circuits.lower_braket import braket_inputs, braket_template

    width, device = 4, LocalSimulator("braket_dm")
    options = {"depolarizing": 0.01, "readout_flip": 0.03}
    for k, part in enumerate(every_circuit(rows_each=4, seed=5)[::3]):
        circuit = braket_template(part.template, width).copy()
        circuit.apply_gate_noise(Noise.Depolarizing(0.01), target_gates=NOISY_GATES)
        circuit.apply_readout_noise(Noise.BitFlip(0.03))
        for q in range(width):
            circuit.probability(target=[q])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            p0 = [[v[0] for v in device.run(circuit, shots=0, inputs=inputs).result().values]
                  for inputs in braket_inputs(part.template, width, pack_params(part.params, width))]
        emulated = get_backend("emulate:dm").submit(part, pack=width, options=options).result
        np.testing.assert_allclose(emulated.p0, np.reshape(p0, -1)[:part.num_rows], atol=1e-12, err_msg=str(k))


def test_dm_agrees_with_braket_local_dm_within_5_sigma() -> None:
    """Every ansatz and reps 1–4, 4 rows each: Braket samples one task per packed circuit, ~0.3 s each."""
    shots, parts = 20_000, every_circuit(rows_each=4, seed=9)
    braket = get_backend("braket:local_dm").submit(parts, shots=shots, pack=4).result
    emulated = get_backend("emulate:dm").submit(parts, pack=4).result
    ok, worst = five_sigma(braket.p0, emulated.p0, shots)
    assert ok.all(), f"rows {np.flatnonzero(~ok)} outside 5σ (max {worst:.2f}σ)"


@pytest.mark.parametrize("name", ["emulate:fake_sherbrooke", "emulate:dm"])
def test_sampled_counts_are_drawn_from_the_exact_probabilities(name: str) -> None:
    shots, parts = 10_000, every_circuit(rows_each=30, seed=2)
    backend = get_backend(name)
    exact = backend.submit(parts).result
    sampled = backend.submit(parts, shots=shots, options={"seed": 4}).result
    again = backend.submit(parts, shots=shots, options={"seed": 4}).result
    other = backend.submit(parts, shots=shots, options={"seed": 5}).result
    ok, worst = five_sigma(sampled.p0, exact.p0, shots)
    assert ok.all(), f"rows {np.flatnonzero(~ok)} outside 5σ (max {worst:.2f}σ)"
    rows = exact.p0.size
    sigma = np.sqrt(np.maximum(exact.p0 * (1 - exact.p0), 1 / shots) / shots)
    assert np.mean(((sampled.p0 - exact.p0) / sigma) ** 2) <= mean_z2_bound(rows)
    assert sampled.shots == shots and np.all(sampled.p0_stderr > 0) and np.array_equal(sampled.p0, again.p0)
    assert not np.array_equal(sampled.p0, other.p0)
    assert sampled.executions == exact.executions == sum(-(-p.num_rows // backend.capabilities().default_pack)
                                                          for p in parts)


def test_each_packed_copy_runs_on_its_own_qubits_noise() -> None:
    """The same circuit on every row of a 15-wide packing (all of melbourne): row r reads what the circuit
    reads alone on copy r % 15's qubit, and the qubits differ as their noise does."""
    backend = get_backend("emulate:fake_melbourne")
    row = random_batch(Template("pz_encoding", 3), 1, seed=1).params
    batch = ActivationBatch(Template("pz_encoding", 3), np.repeat(row, 45, axis=0),
                            (Segment("rows", np.arange(45).reshape(-1, 1, 1)),), "fast")
    wide = backend.submit(batch, pack=15).result
    qubits = wide.qubits
    assert qubits is not None and sorted(qubits) == list(range(15)) and wide.executions == 3
    alone = np.array([backend.submit(batch.slice_rows(0, 1), options={"qubits": [q]}).result.p0[0] for q in qubits])
    np.testing.assert_allclose(wide.p0, np.tile(alone, 3), atol=1e-12)
    assert np.ptp(alone) > 0.01  # melbourne's read-out errors alone span 0.02–0.2 across its qubits
    narrow = backend.submit(batch, pack=4).result  # the 4 best qubits are the first 4 of the wide packing
    np.testing.assert_allclose(narrow.p0, np.tile(alone[:4], 12)[:45], atol=1e-12)


@pytest.mark.parametrize(("name", "options"), [("emulate:dm", {"depolarizing": 0.0, "readout_flip": 0.0}),
                                                ("emulate:dm", {"noise": False}),
                                                ("emulate:fake_sherbrooke", {"noise": False}),
                                                ("emulate:fake_melbourne", {"noise": False})])
def test_without_noise_the_emulator_is_the_exact_simulator(name: str, options: dict) -> None:
    for part in every_circuit(rows_each=20, seed=7):
        for fold in (1, 3):
            folded = ActivationBatch(Template(part.template.ansatz, part.template.reps, fold), part.params,
                                     part.segments, part.readout)
            result = get_backend(name).submit(folded, pack=3, options=options).result
            np.testing.assert_allclose(result.p0, exact_p0(part), atol=1e-12, rtol=0)


def test_dm_noise_on_the_calibration_circuits_is_analytic() -> None:
    """|1⟩ through X, depolarized: z = −(1 − 4p/3), so p0 = 2p/3, then a read-out flip f; |0⟩ has no gate."""
    p, f = 0.03, 0.05
    preparations = tuple(ActivationBatch(Template.preparation(bit), np.zeros((3, 0)), (), "z") for bit in (0, 1))
    result = get_backend("emulate:dm").submit(preparations, pack=2,
                                              options={"depolarizing": p, "readout_flip": f}).result
    expected = [1 - f] * 3 + [(1 - f) * 2 * p / 3 + f * (1 - 2 * p / 3)] * 3
    np.testing.assert_allclose(result.p0, expected, atol=1e-15)


def test_readout_and_zne_run_on_a_device_emulation() -> None:
    """``mitigated(emulate:fake_melbourne, readout+zne)``: the folded scales and the calibration circuits run as
    parts of one submission on aer's qubits. (That read-out correction removes emulate:dm's flip is
    tests/test_mitigation_accuracy.py's read-out test.)"""
    import torch

    from qkan_orch.backends import run_plan
    from qkan_orch.circuits import FeedForwardPlan
    from qkan_orch.mitigation import Mitigation, mitigated
    from qkan_orch.models import build_model, parse_spec

    model = build_model(parse_spec({"width": [1, 1], "reps": 1, "fast_measure": False}), seed=0).double()
    with torch.no_grad():
        model.layers[0].theta[0, 0, 1, 1] = np.pi / 2
    plan = FeedForwardPlan(model, np.linspace(-1.0, 1.0, 16)[:, None])
    device = get_backend("emulate:fake_melbourne")
    zne = run_plan(plan, mitigated(device, Mitigation.parse("readout+zne", device.capabilities())), shots=10_000,
                   options={"seed": 3})
    assert np.isfinite(zne.outputs).all() and (zne.stderr > 0).all() and zne.rounds[0].qubits == [0, 8, 1, 11]


def test_emulators_are_listed_as_noisy_simulators() -> None:
    from qkan_orch.backends.qiskit_common import fake_backend_classes
    from qkan_orch.backends.registry import local_names

    names = local_names()
    assert "emulate:dm" in names and all(f"emulate:{fake}" in names for fake in fake_backend_classes())
    for name in ("emulate:dm", "emulate:fake_sherbrooke"):
        caps = get_backend(name).capabilities()
        assert caps.kind == "noisy simulator" and "seed" in caps.options
    assert get_backend("emulate:fake_sherbrooke").capabilities().max_pack == 127


@pytest.mark.parametrize("name", ["emulate:fake_nowhere", "emulate:", "emulate:aer", "emulate:fake_sherbroke"])
def test_unknown_devices_are_refused(name: str) -> None:
    with pytest.raises(InputError) as err:
        get_backend(name)
    assert err.value.field == "backend"


@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("emulate:fake_melbourne", {"options": {"qubits": [0, 15]}}, "options.qubits"),
        ("emulate:fake_melbourne", {"options": {"qubits": [-1]}}, "options.qubits"),
        ("emulate:fake_melbourne", {"options": {"qubits": [3, 3]}}, "options.qubits"),
        ("emulate:fake_melbourne", {"pack": 2, "options": {"qubits": [3]}}, "options.qubits"),
        ("emulate:fake_melbourne", {"options": {"qubits": "0,1"}}, "options.qubits"),
        ("emulate:fake_melbourne", {"pack": 16}, "pack"),
        ("emulate:fake_melbourne", {"shots": 0}, "shots"),
        ("emulate:dm", {"options": {"qubits": [0]}}, "options.qubits"),
        ("emulate:dm", {"options": {"depolarizing": 2.0}}, "options.depolarizing"),
        ("emulate:dm", {"options": {"readout_flip": -0.1}}, "options.readout_flip"),
        ("emulate:dm", {"pack": 14}, "pack"),
    ],
)
def test_bad_settings_are_refused_before_running(name: str, kwargs: dict, field: str) -> None:
    with pytest.raises(InputError) as err:
        get_backend(name).submit(random_batch(Template("rpz_encoding", 1), 4, seed=0), **kwargs)
    assert err.value.field == field
