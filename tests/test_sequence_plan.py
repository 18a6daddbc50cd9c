"""QKAN-LSTM and HQKAN-LSTM through the compiler (issue 13): one round per time step, exactly the model's
forward on the exact backend, and standard errors that explain shot noise through the recurrence."""

import itertools
import json

import numpy as np
import pytest
import torch

from qkan_orch.backends import get_backend
from qkan_orch.backends.runner import run_plan
from qkan_orch.circuits import SequencePlan, plan_for
from qkan_orch.models import InputError, SequenceModel, build_model, model_from_bytes, model_to_bytes, parse_spec
from qkan_orch.models.spec import spec_to_json


def sequence_model(kind: str = "qkan-lstm", layers: int = 1, head: str = "last", window: int = 4, in_dim: int = 2,
                   hidden: int = 3, seed: int = 1, **gate: object) -> SequenceModel:
    """A float64 model with every parameter moved off its initial value (so none can be dropped unnoticed)."""
    spec = parse_spec({"kind": kind, "in_dim": in_dim, "hidden": hidden, "window": window, "layers": layers,
                       "head": head, "latent": 2, "gate": {"reps": 2, **gate}})
    model = build_model(spec, seed=seed).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model  # type: ignore[return-value]


def windows(samples: int, window: int, in_dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(samples, window, in_dim))


@pytest.mark.parametrize(("kind", "layers", "head", "ansatz", "fast"), list(itertools.product(
    ("qkan-lstm", "hqkan-lstm"), (1, 2), ("last", "sequence"), ("pz_encoding", "rpz_encoding", "real"),
    (True, False))))
def test_exact_through_the_compiler_equals_the_models_forward(kind: str, layers: int, head: str, ansatz: str,
                                                               fast: bool) -> None:
    model = sequence_model(kind, layers, head, ansatz=ansatz, fast_measure=fast)
    x = windows(5, 4, 2)
    report = run_plan(plan_for(model, x), get_backend("exact"))
    expected = model(torch.from_numpy(x)).detach().numpy()
    assert report.outputs.shape == expected.shape == (5, 4 if head == "sequence" else 1)
    np.testing.assert_allclose(report.outputs, expected, rtol=0, atol=1e-6)
    assert not report.stderr.any()  # analytic: no error anywhere in the recurrence


@pytest.mark.parametrize(("layers", "window"), [(1, 5), (2, 5), (3, 2)])
def test_a_step_is_one_round_with_every_gate_of_every_layer_that_can_run(layers: int, window: int) -> None:
    model = sequence_model(layers=layers, window=window)
    plan = SequencePlan(model, windows(3, window, 2))
    state = plan.initial_state()
    names = []
    while (batch := plan.next_batch(state)) is not None:
        names.append([s.name for s in batch.segments])
        state = plan.absorb(state, get_backend("exact").submit(batch).result)
    assert len(names) == plan.total_rounds == window + layers - 1  # one provider job per step (and layer lag)
    for r, segments in enumerate(names):  # the wavefront: layer k at step r − k
        running = [k for k in range(layers) if 0 <= r - k < window]
        assert segments == [f"{k}.{gate}" for k in running for gate in "ifgo"]


def test_shot_noise_through_the_recurrence_is_explained_by_the_propagated_errors() -> None:
    # z = (sampled − exact) / propagated σ for 64 windows. Within one run the windows are not independent: the
    # activations they share (h₀ = 0 at every window's first step) are one estimate for all of them, so one
    # run's mean z² swings from 0.9 to 2.0 between seeds. Runs are independent: the mean z² pooled over 100
    # runs has a standard error of ~0.03 (measured: a run's mean scatters by 0.27–0.32). What the propagation
    # leaves out (the four gates share h_{t−1}'s noise) shows as a pooled mean a little above 1 (1.15–1.18 over
    # three sets of 200 seeds), so the bounds 0.9 and 1.4 are 9σ and 7σ from it: a propagated σ more than 15 %
    # below the scatter (√1.4) or more than 5 % above it (√0.9) fails. The noiseless emulator draws each row's zeros
    # Binomial(shots, p0), the statistics of Aer's sampling (which test_emulator compares), in a thousandth of
    # Aer's time at 10⁵ shots: this is a test of the propagated errors, not of a simulator.
    model = sequence_model(hidden=2, window=3, in_dim=1, fast_measure=False)
    x = windows(64, 3, 1, seed=2)
    exact = run_plan(plan_for(model, x), get_backend("exact")).outputs
    emulator = get_backend("emulate:dm")
    per_run = np.array([
        np.mean(((sampled.outputs - exact) / sampled.stderr) ** 2)
        for sampled in (run_plan(plan_for(model, x), emulator, shots=100_000, pack=8,
                                 options={"seed": seed, "noise": False}) for seed in range(100))
    ])
    pooled, standard_error = per_run.mean(), per_run.std(ddof=1) / np.sqrt(len(per_run))
    assert standard_error <= 0.05, standard_error
    assert 0.9 <= pooled <= 1.4, (pooled, standard_error)


@pytest.mark.parametrize(("inputs", "message"), [
    (np.zeros((2, 5, 2)), "windows of 5 steps; the model takes 4"),
    (np.zeros((2, 4, 3)), "3 features per step; the model takes 2"),
    (np.zeros((2, 8)), "got 2-D"),
    (np.zeros((0, 4, 2)), "is empty"),
    (np.full((2, 4, 2), np.nan), "NaN"),
    (np.array([[["a", "b"]] * 4]), "numeric"),
])
def test_bad_windows_are_refused_naming_inputs(inputs: np.ndarray, message: str) -> None:
    with pytest.raises(InputError) as refused:
        plan_for(sequence_model(), inputs)
    assert refused.value.field == "inputs" and message in refused.value.message


@pytest.mark.parametrize(("change", "field"), [
    ({"hidden": 0}, "spec.hidden"),
    ({"window": None}, "spec.window"),
    ({"head": "middle"}, "spec.head"),
    ({"kind": "hqkan-lstm", "latent": 0}, "spec.latent"),
    ({"gate": {"width": [2, 2]}}, "spec.gate"),
    ({"gate": {"ansatz": "nonsense"}}, "spec.gate.ansatz"),
    ({"cells": 2}, "spec.cells"),
])
def test_bad_sequence_specs_name_the_field(change: dict, field: str) -> None:
    spec = {"kind": "qkan-lstm", "in_dim": 1, "hidden": 3, "window": 4, **change}
    with pytest.raises(InputError) as refused:
        parse_spec(spec)
    assert refused.value.field == field


@pytest.mark.parametrize("kind", ["qkan-lstm", "hqkan-lstm", "lstm"])
def test_sequence_models_store_as_safetensors_with_their_spec(kind: str) -> None:
    model = sequence_model(kind, layers=2, head="sequence")
    assert parse_spec(json.loads(spec_to_json(model.spec))) == model.spec
    again = model_from_bytes(model_to_bytes(model)).double()
    x = torch.from_numpy(windows(3, 4, 2))
    torch.testing.assert_close(again(x), model(x), rtol=1e-5, atol=1e-6)  # parameters stored as float32
    assert sum(v.numel() for v in model.state_dict().values()) == model.spec.state_size


def test_a_classical_lstm_is_a_baseline_with_nothing_to_run_on_a_backend() -> None:
    with pytest.raises(InputError) as refused:
        plan_for(sequence_model("lstm"), windows(2, 4, 2))
    assert refused.value.field == "model"
