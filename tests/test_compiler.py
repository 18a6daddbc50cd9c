"""The compiler and the plan: exactness through the IR, dedup, pruning, resumability."""

import itertools

import numpy as np
import pytest
import torch

from conftest import make_inputs, make_model
from qkan_orch.backends import get_backend, run_plan
from qkan_orch.backends.exact import exact_p0
from qkan_orch.circuits import ActivationBatch, BatchResult, FeedForwardPlan, PlanState, compile_layer
from qkan_orch.models import InputError
from qkan_orch.models.ansatz import build_ansatz

COMBOS = list(itertools.product(["pz_encoding", "rpz_encoding", "real"], [False, True], [False, True]))


def forward(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(("ansatz", "preact", "fast"), COMBOS)
def test_exact_through_the_compiler_equals_the_model(ansatz: str, preact: bool, fast: bool) -> None:
    model = make_model(
        width=[3, 5, 4, 2], reps=3, ansatz=ansatz, preact_trainable=preact, fast_measure=fast,
        postact_weight_trainable=True, postact_bias_trainable=True, ba_trainable=True,
    )
    x = make_inputs(96, 3)
    report = run_plan(FeedForwardPlan(model, x), get_backend("exact"))
    assert len(report.rounds) == 3
    assert np.max(np.abs(report.outputs - forward(model, x))) <= 1e-6
    assert np.max(np.abs(report.outputs - forward(model, x))) <= 1e-12  # in fact to rounding
    assert not report.stderr.any()


@pytest.mark.parametrize("ansatz", ["pz_encoding", "rpz_encoding", "real"])
def test_exact_through_the_compiler_equals_hqkan_and_is_map_models(ansatz: str) -> None:
    hq = make_model(kind="hqkan", in_dim=6, out_dim=2, qkan={"width": [3, 3, 3], "reps": 2, "ansatz": ansatz})
    x = make_inputs(64, 6)
    assert np.max(np.abs(run_plan(FeedForwardPlan(hq, x), get_backend("exact")).outputs - forward(hq, x))) <= 1e-6
    mapped = make_model(width=[2, 3, 2], reps=2, ansatz=ansatz, is_map=True, hidden=5, norm_out=2)
    x = make_inputs(64, 2)
    plan = FeedForwardPlan(mapped, x)
    assert plan.total_rounds == 1
    assert np.max(np.abs(run_plan(plan, get_backend("exact")).outputs - forward(mapped, x))) <= 1e-6


def test_column_order_is_the_documented_one() -> None:
    """pz row = [θ00, θ01, e0, θ10, θ11, e1, θ20, θ21] with e_l = w_l·x + b_l."""
    model = make_model(width=[2, 3], reps=2, preact_trainable=True)
    layer = model.layers[0]
    x = np.array([[0.25, -0.5]])
    batch = compile_layer(layer, x)
    (segment,) = batch.segments
    o, i = 2, 1
    row = batch.params[segment.slots[0, o, i]]
    theta = layer.theta.detach().numpy()[o, i]
    w = layer.preacts_weight.detach().numpy()[o, i]
    b = layer.preacts_bias.detach().numpy()[o, i]
    want = [theta[0, 0], theta[0, 1], w[0] * -0.5 + b[0], theta[1, 0], theta[1, 1], w[1] * -0.5 + b[1],
            theta[2, 0], theta[2, 1]]
    assert np.allclose(row, want, atol=0, rtol=0)
    assert [g.name for g in build_ansatz("pz", 2).gates] == ["h", "rz", "ry", "rz", "rz", "ry", "rz", "rz", "ry"]
    assert [g.name for g in build_ansatz("real", 1).gates] == ["h", "x", "ry", "z", "ry"]


def test_identical_rows_are_deduplicated_and_scatter_back() -> None:
    model = make_model(width=[3, 4], reps=2)
    x = make_inputs(10, 3)
    x[5] = x[2]  # a repeated sample
    x[7, 1] = x[0, 1]  # a repeated value in one column only
    batch = compile_layer(model.layers[0], x)
    distinct = sum(len(np.unique(x[:, i])) for i in range(3))
    assert batch.num_rows == 4 * distinct == 4 * (9 + 8 + 9)
    assert batch.num_requested == 10 * 4 * 3
    assert len(np.unique(batch.params, axis=0)) == batch.num_rows
    (act,) = batch.scatter(exact_p0(batch))
    want = exact_p0(compile_layer(model.layers[0], x[[2]]))
    (want_act,) = compile_layer(model.layers[0], x[[2]]).scatter(want)
    assert np.array_equal(act[5], act[2]) and np.allclose(act[2], want_act[0])


def test_zero_weight_edges_produce_no_rows() -> None:
    model = make_model(width=[3, 4], reps=2, postact_weight_trainable=True)
    with torch.no_grad():
        model.layers[0].mask[1, :] = 0.0
        model.layers[0].postact_weights[2, 0] = 0.0
    x = make_inputs(16, 3)
    batch = compile_layer(model.layers[0], x)
    assert batch.num_rows == 16 * (12 - 3 - 1)
    (segment,) = batch.segments
    assert (segment.slots[:, 1, :] == -1).all() and (segment.slots[:, 2, 0] == -1).all()
    report = run_plan(FeedForwardPlan(model, x), get_backend("exact"))
    assert np.max(np.abs(report.outputs - forward(model, x))) <= 1e-12


def test_batches_concatenate_into_segments() -> None:
    model = make_model(width=[2, 3], reps=2)
    other = make_model(seed=5, width=[2, 2], reps=2)
    a = compile_layer(model.layers[0], make_inputs(4, 2), "a")
    b = compile_layer(other.layers[0], make_inputs(5, 2), "b")
    joined = ActivationBatch.concatenate([a, b])
    assert joined.num_rows == a.num_rows + b.num_rows
    got_a, got_b = joined.scatter(exact_p0(joined))
    assert np.allclose(got_a, a.scatter(exact_p0(a))[0]) and np.allclose(got_b, b.scatter(exact_p0(b))[0])
    c = compile_layer(make_model(width=[2, 3], reps=3).layers[0], make_inputs(4, 2))
    with pytest.raises(ValueError, match="same template"):
        ActivationBatch.concatenate([a, c])


def test_plan_resumes_from_serialized_state_in_a_new_plan() -> None:
    model = make_model(width=[2, 4, 3, 1], reps=2)
    x = make_inputs(32, 2)
    backend = get_backend("exact")
    first = FeedForwardPlan(model, x)
    state = first.initial_state()
    batch = first.next_batch(state)
    state = first.absorb(state, backend.submit(batch).result)
    blob = state.to_bytes()
    assert isinstance(blob, bytes) and len(blob) < 10_000
    second = FeedForwardPlan(model, x)  # a new process would rebuild the plan from the job
    resumed = PlanState.from_bytes(blob)
    assert resumed.rounds_done == 1 and np.array_equal(resumed.x, state.x)
    while (batch := second.next_batch(resumed)) is not None:
        resumed = second.absorb(resumed, backend.submit(batch).result)
    outputs, _ = second.outputs(resumed)
    assert np.array_equal(outputs, run_plan(FeedForwardPlan(model, x), backend).outputs)
    assert len(resumed.layer_outputs) == 3


def test_recompiled_batch_is_identical() -> None:
    model = make_model(width=[3, 4], reps=2, preact_trainable=True)
    x = make_inputs(20, 3)
    a, b = compile_layer(model.layers[0], x), compile_layer(model.layers[0], x.copy())
    assert np.array_equal(a.params, b.params) and np.array_equal(a.segments[0].slots, b.segments[0].slots)


def test_absorb_refuses_a_result_of_the_wrong_size() -> None:
    plan = FeedForwardPlan(make_model(width=[2, 2], reps=1), make_inputs(4, 2))
    state = plan.initial_state()
    with pytest.raises(ValueError, match="rows"):
        plan.absorb(state, BatchResult(p0=np.zeros(3), p0_stderr=np.zeros(3)))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (np.zeros((4, 3)), "3 columns"),
        (np.zeros((0, 2)), "empty"),
        (np.array([[0.1, np.nan]]), "NaN"),
        (np.array([[0.1, np.inf]]), "NaN or infinity"),
        (np.zeros((2, 2, 2)), "2-D"),
        (np.array([["a", "b"]]), "numeric"),
    ],
)
def test_bad_inputs_are_refused_naming_the_problem(inputs: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        FeedForwardPlan(make_model(width=[2, 1], reps=1), inputs)
    assert err.value.field == "inputs"


def test_standard_errors_follow_the_delta_method() -> None:
    """One layer, ⟨Z⟩ read-out: Var y_o = Σ_i (pw·m)² · 4 · Var p0 exactly."""
    model = make_model(width=[2, 3], reps=2, fast_measure=False, postact_weight_trainable=True)
    plan = FeedForwardPlan(model, make_inputs(5, 2))
    state = plan.initial_state()
    batch = plan.next_batch(state)
    se = np.full(batch.num_rows, 0.01)
    state = plan.absorb(state, BatchResult(p0=exact_p0(batch), p0_stderr=se))
    _, stderr = plan.outputs(state)
    weights = model.layers[0].postact_weights.detach().numpy()
    want = np.sqrt(((2 * 0.01) ** 2 * weights**2).sum(axis=1))
    assert np.allclose(stderr, want[None, :].repeat(5, axis=0))
