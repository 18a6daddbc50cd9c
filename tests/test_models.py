"""The torch models: qkan parity, extension, HQKAN, training, storage, refusals."""

import itertools
import json
import pickle
import warnings

import numpy as np
import pytest
import qkan
import torch

from conftest import make_inputs, make_model
from qkan_orch.models import (
    HQKAN,
    InputError,
    build_model,
    extend_reps,
    fit,
    load_model,
    parse_spec,
    qkan_layers,
    save_model,
)
from qkan_orch.models.functions import FUNCTIONS, get_function
from qkan_orch.models.spec import IgnoredOptionsWarning, spec_to_json

COMBOS = list(itertools.product(["pz_encoding", "rpz_encoding", "real"], [False, True], [False, True]))


@pytest.mark.parametrize(("ansatz", "preact", "fast"), COMBOS)
def test_qkan_state_dict_loads_unchanged_and_outputs_match(ansatz: str, preact: bool, fast: bool) -> None:
    kwargs = dict(
        width=[3, 4, 2], reps=3, ansatz=ansatz, preact_trainable=preact, fast_measure=fast,
        ba_trainable=True, postact_weight_trainable=True, postact_bias_trainable=True,
    )
    torch.manual_seed(0)
    ref = qkan.QKAN(**kwargs, c_dtype=torch.complex128, p_dtype=torch.float64)
    state = {
        k: (torch.rand_like(v) > 0.3).double() if k.endswith("mask") else v + 0.3 * torch.randn_like(v)
        for k, v in ref.state_dict().items()
    }
    ref.load_state_dict(state)
    ours = build_model(parse_spec(kwargs)).double()
    ours.load_state_dict(ref.state_dict())  # strict: same names and shapes
    assert {k: p.requires_grad for k, p in ours.named_parameters()} == {
        k: p.requires_grad for k, p in ref.named_parameters()
    }
    if ansatz == "real":
        # qkan forces bfloat16 arithmetic for 'real'; compare against its solver run in complex128.
        from qkan.solver.exact import torch_exact_solver

        x = torch.from_numpy(make_inputs(64, 3))
        layer = ref.layers[0]
        want = torch_exact_solver(
            x, layer.theta, layer.preacts_weight, layer.preacts_bias, 3, ansatz="real", out_dim=4,
            preacts_trainable=preact, fast_measure=fast, dtype=torch.complex128,
        )
        got = ours.layers[0].activations(x)
    else:
        x = torch.from_numpy(make_inputs(64, 3))
        want, got = ref(x), ours(x)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("ansatz", ["pz_encoding", "rpz_encoding"])
def test_layer_extension_preserves_the_function(ansatz: str) -> None:
    model = make_model(width=[2, 3, 1], reps=2, ansatz=ansatz, preact_trainable=True)
    longer = extend_reps(model, 5)
    x = torch.from_numpy(make_inputs(64, 2))
    assert longer.layers[0].theta.shape[2] == model.layers[0].theta.shape[2] + 3
    with torch.no_grad():
        assert torch.allclose(longer(x), model(x), atol=1e-12)
    # and the new repetitions are live parameters: moving them changes the output
    with torch.no_grad():
        longer.layers[0].theta[:, :, 4].add_(0.5)
        assert not torch.allclose(longer(x), model(x), atol=1e-6)


@pytest.mark.parametrize("spec", [
    {"kind": "hqkan", "in_dim": 3, "out_dim": 2, "qkan": {"width": [2, 3, 2], "reps": 2}},
    {"kind": "qkan-lstm", "hidden": 2, "window": 4, "layers": 2, "gate": {"reps": 2, "preact_trainable": True}},
    {"kind": "hqkan-lstm", "hidden": 2, "window": 3, "latent": 2, "gate": {"reps": 1, "ansatz": "rpz_encoding"}},
])
def test_layer_extension_of_hqkan_and_sequence_models_extends_every_qkan_layer_exactly(spec: dict) -> None:
    model = make_model(**spec)
    longer = extend_reps(model, 4)
    assert all(layer.reps == 4 for layer in qkan_layers(longer)) and len(qkan_layers(longer)) == len(
        qkan_layers(model))
    assert longer.spec == model.spec.with_reps(4) and next(longer.parameters()).dtype == torch.float64
    shape = (16, spec["window"], 1) if "window" in spec else (16, spec["in_dim"])
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(longer(x), model(x), rtol=0, atol=1e-14)  # built in float64: nothing rounded


def test_layer_extension_refuses_a_classical_lstm_by_model() -> None:
    with pytest.raises(InputError) as refused:
        extend_reps(make_model(kind="lstm", hidden=2, window=3), 2)
    assert refused.value.field == "model" and "no QKAN layer" in refused.value.message


def test_layer_extension_refuses_real_and_fewer_reps() -> None:
    with pytest.raises(InputError, match="real"):
        extend_reps(make_model(width=[2, 1], reps=2, ansatz="real"), 3)
    with pytest.raises(InputError, match="must exceed"):
        extend_reps(make_model(width=[2, 1], reps=2), 2)


def test_hqkan_is_linear_qkan_linear() -> None:
    model = make_model(kind="hqkan", in_dim=5, out_dim=3, qkan={"width": [2, 2], "reps": 2})
    assert isinstance(model, HQKAN)
    x = torch.from_numpy(make_inputs(8, 5))
    with torch.no_grad():
        want = model.up(model.qkan(model.down(x)))
        assert torch.equal(model(x), want)
    assert [type(s).__name__ for s in model.stages()] == ["Linear", "QKANLayer", "Linear"]


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_training_fits_and_is_reproducible(optimizer: str) -> None:
    f = get_function("sin")
    x = f.sample(64)
    y = f(x)
    runs = []
    for _ in range(2):
        model = build_model(parse_spec({"width": [1, 2, 1], "reps": 2}), seed=3)
        steps = 150 if optimizer == "adam" else 8
        runs.append(fit(model, x.float(), y.float(), optimizer=optimizer, steps=steps, progress=False).losses)
    assert runs[0] == runs[1]
    assert runs[0][-1] < 0.02 * runs[0][0]


def test_builtin_functions_stay_in_range() -> None:
    for f in FUNCTIONS.values():
        y = f(f.grid(9 if f.in_dim == 2 else 81))
        assert y.abs().max() <= 1.0 + 1e-12, f.name


def test_save_and_load_round_trip(tmp_path) -> None:
    model = make_model(width=[2, 3, 1], reps=2, ansatz="rpz", postact_bias_trainable=True).float()
    path = tmp_path / "m.safetensors"
    save_model(model, str(path))
    loaded = load_model(str(path))
    assert loaded.spec == model.spec
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


def test_loads_qkan_pt_with_its_kwargs_including_flattened_p_dim2(tmp_path) -> None:
    kwargs = {"width": [2, 3, 1], "reps": 2, "p_dim": 2, "seed": 1, "preact_trainable": True}
    ref = qkan.QKAN(**kwargs)
    torch.save(ref.state_dict(), tmp_path / "m.pt")
    (tmp_path / "m.json").write_text(json.dumps(kwargs))
    assert ref.state_dict()["layers.0.theta"].ndim == 2
    model = load_model(str(tmp_path / "m.pt"), str(tmp_path / "m.json"))
    x = torch.from_numpy(make_inputs(16, 2)).float()
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-6)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"group": 2}, "group"),
        ({"is_batchnorm": True}, "is_batchnorm"),
        ({"ansatz": "px_encoding"}, "ansatz"),
        ({"ansatz": "mix"}, "ansatz"),
        ({"solver": "my_solver"}, "solver"),
        ({"theta_size": [2, 2]}, "theta_size"),
        ({"base_activation": "softplus"}, "base_activation"),
        ({"width": [2]}, "width"),
        ({"reps": 0}, "reps"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_unsupported_options_are_refused_by_name(change: dict, field: str) -> None:
    with pytest.raises(InputError) as err:
        parse_spec({"width": [2, 3, 1], **change})
    assert err.value.field.endswith(field)


class _Evil:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickle_payload_named_pt_is_refused_and_never_executed(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.json").write_text(json.dumps({"width": [2, 1]}))
    for name, payload in [("zip.pt", None), ("raw.pt", pickle.dumps({"layers.0.theta": _Evil()}))]:
        path = tmp_path / name
        if payload is None:
            torch.save({"layers.0.theta": _Evil()}, path)
        else:
            path.write_bytes(payload)
        with pytest.raises(InputError, match="model"):
            load_model(str(path), str(tmp_path / "spec.json"))
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "content", [b"", b"not a model at all", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": broken", b"PK\x03\x04junk"]
)
def test_corrupt_model_files_are_refused(tmp_path, content: bytes) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(content)
    (tmp_path / "spec.json").write_text(json.dumps({"width": [2, 1]}))
    with pytest.raises(InputError) as err:
        load_model(str(path), str(tmp_path / "spec.json"))
    assert err.value.field == "model"


def test_weights_that_do_not_fit_the_spec_are_refused(tmp_path) -> None:
    model = make_model(width=[2, 3, 1], reps=2)
    save_model(model, str(tmp_path / "m.safetensors"))
    (tmp_path / "other.json").write_text(json.dumps({"width": [2, 4, 1], "reps": 2}))
    with pytest.raises(InputError, match="shape"):
        load_model(str(tmp_path / "m.safetensors"), str(tmp_path / "other.json"))
    bad = {k: v.clone() for k, v in model.state_dict().items()}
    bad["layers.0.theta"][0, 0, 0, 0] = float("nan")
    from qkan_orch.models.storage import model_from_state

    with pytest.raises(InputError, match="NaN"):
        model_from_state(model.spec, bad)


def test_float32_inputs_are_accepted_by_the_float32_model() -> None:
    model = build_model(parse_spec({"width": [2, 1]}), seed=0)
    out = model(torch.zeros(3, 2))
    assert out.shape == (3, 1) and np.isfinite(out.detach().numpy()).all()


def test_qkan_options_that_do_not_change_the_forward_pass_are_named_in_one_warning() -> None:
    kwargs = {"width": [2, 3, 1], "reps": 2, "solver": "flash", "device": "cuda", "c_dtype": "complex64"}
    with pytest.warns(IgnoredOptionsWarning) as caught:
        spec = parse_spec(kwargs)
    assert len(caught) == 1
    assert str(caught[0].message) == ("spec: ignoring qkan options c_dtype, device, solver "
                                      "(they do not change the forward pass)")
    assert spec == parse_spec({"width": [2, 3, 1], "reps": 2})
    with pytest.warns(IgnoredOptionsWarning, match=r"spec\.qkan: ignoring qkan options seed "):
        parse_spec({"kind": "hqkan", "in_dim": 4, "qkan": {"width": [2, 2], "seed": 1}})


def test_our_own_specs_and_refused_options_raise_no_ignore_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgnoredOptionsWarning)
        spec = parse_spec({"width": [2, 3, 1], "reps": 2, "fast_measure": False})
        assert parse_spec(json.loads(spec_to_json(spec))) == spec  # a spec we saved carries only our fields
        with pytest.raises(InputError) as err:  # refused before anything is said about ignored ones
            parse_spec({"width": [2, 3, 1], "device": "cpu", "is_batchnorm": True})
    assert err.value.field == "spec.is_batchnorm"
