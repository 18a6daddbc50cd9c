"""Noise-aware training (issue 14 item 3): ``NoisyForward`` reads every activation from the emulator's noisy p0 on
the qubit ``aer:<device>`` would run it on; gradients flow through it; without noise it is the model's forward;
``qkan-orch train --noise`` and ``POST /v1/models/train`` record the device in the file and in ModelOut; bad
``noise``/``qubits`` are refused by field with nothing stored or written. (bench/noise_aware.py measures what it
buys on aer:fake_melbourne.)

Real service: system Redis, PostgreSQL, one Celery worker process.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from qkan_orch.backends import qiskit_common
from qkan_orch.backends.emulator import EmulatedDevice, EmulatorBackend, emulated_device
from qkan_orch.circuits.compile import compile_layer
from qkan_orch.client import Client, JobState
from qkan_orch.models import InputError, Model, build_model, fit, model_from_bytes, parse_spec, save_model
from qkan_orch.models.functions import get_function
from qkan_orch.models.noise_aware import NoisyForward, read_out
from qkan_orch.models.storage import model_noise
from qkan_orch.service.local import LocalService
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.tables import StoredModel
from support.cli_process import cli

DEVICE = "fake_melbourne"
BEST = [0, 8, 1, 11]  # aer:fake_melbourne's qubits at its default packing (4): the best read-out ones


def qkan(seed: int = 0) -> Model:
    model = build_model(parse_spec({"width": [2, 3, 1], "reps": 2}), seed=seed).double()
    model.layers[0].mask.data[1, 0] = 0.0  # an edge that never runs: no rows, later rows move up
    return model


def inputs(n: int = 40) -> torch.Tensor:
    x = torch.rand(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    x[5] = x[2]  # a repeated sample: one deduplicated row serves both
    return x


@pytest.mark.parametrize("qubits", ["auto", "2,3,4"])
def test_the_noisy_forward_reads_what_the_emulator_backend_gives_on_the_same_rows_and_qubits(qubits: str) -> None:
    model, x = qkan(), inputs()
    device = emulated_device(DEVICE, qubits)
    assert device.qubits == (tuple(BEST) if qubits == "auto" else (2, 3, 4))
    noisy = NoisyForward(model, device)
    for layer in model.layers:
        batch = compile_layer(layer, x)
        result = EmulatorBackend(DEVICE).submit(batch, options={"qubits": list(device.qubits)}).result
        slots = batch.segments[0].slots
        ran = slots >= 0
        expected = read_out(torch.from_numpy(result.p0[np.where(ran, slots, 0)]), layer.fast_measure)
        got = noisy.activations(layer, x).detach()
        assert float((got - expected)[torch.from_numpy(ran)].abs().max()) <= 1e-12
        assert ran.all() or layer is model.layers[0]  # only the masked edge never runs
        x = layer.combine(x, got)


def test_gradients_flow_through_the_noisy_activations() -> None:
    model = qkan()
    NoisyForward(model, emulated_device(DEVICE)).forward(inputs()).square().sum().backward()
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert torch.isfinite(parameter.grad).all(), name
    for layer in model.layers:
        assert layer.theta.grad[layer.mask != 0].abs().min() > 0


@pytest.mark.parametrize("spec", [{"width": [2, 3, 1], "reps": 2},
                                  {"kind": "hqkan", "in_dim": 3, "out_dim": 2, "qkan": {"width": [2, 2], "reps": 1,
                                                                                         "fast_measure": False}}])
def test_without_noise_it_is_the_models_own_forward(spec: dict) -> None:
    model = build_model(parse_spec(spec), seed=1).double()
    x = torch.rand(16, model.in_dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 - 1
    silent = EmulatedDevice(DEVICE, tuple(BEST), noisy=False)
    assert float((NoisyForward(model, silent)(x) - model(x)).detach().abs().max()) <= 1e-12


def test_refusals_name_the_field() -> None:
    for args, field, words in [
        (("fake_nowhere",), "noise", "no IBM fake device 'fake_nowhere'"),
        ((DEVICE, "0,15"), "qubits", "distinct qubits in 0..14"),
        ((DEVICE, "1,1"), "qubits", "distinct"),
        ((DEVICE, "a,b"), "qubits", "comma-separated"),
    ]:
        with pytest.raises(InputError) as refused:
            emulated_device(*args)
        assert refused.value.field == field and words in refused.value.message
    with pytest.raises(InputError) as refused:
        NoisyForward(build_model(parse_spec({"kind": "qkan-lstm", "hidden": 1, "window": 2})),
                     emulated_device(DEVICE))
    assert refused.value.field == "noise"


def test_a_qubit_the_calibration_calls_down_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = qiskit_common.qubit_calibration

    def eight_down(target: object, props: object) -> list[dict]:
        return [{**row, "operational": row["qubit"] != 8} for row in real(target, props)]

    monkeypatch.setattr(qiskit_common, "qubit_calibration", eight_down)
    with pytest.raises(InputError) as refused:
        emulated_device(DEVICE, "0,8")
    assert refused.value.field == "qubits" and "[8]" in refused.value.message and "not operational" in \
        refused.value.message


def test_cli_training_records_the_noise_in_the_file_and_refuses_bad_flags_in_one_line(tmp_path: Path) -> None:
    flags = ("train", "--function", "sin_cos", "--width", "2,1", "--reps", "1", "--steps", "1", "--samples", "16",
             "--quiet", "--noise", DEVICE)
    done = cli(*flags, "--qubits", "3,4", "--out", "ok.safetensors", env={}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "through fake_melbourne's noise on qubits [3, 4]" in done.stderr
    assert model_noise((tmp_path / "ok.safetensors").read_bytes()) == {"device": DEVICE, "qubits": [3, 4]}
    for extra, field in ((("--qubits", "0,99"), "qubits"), (("--noise", "fake_nowhere"), "noise")):
        refused = cli(*flags, *extra, "--out", "bad.safetensors", env={}, cwd=tmp_path)
        assert refused.returncode == 2 and refused.stderr.startswith(f"qkan-orch: error: {field}: ")
        assert refused.stderr.count("\n") == 1, refused.stderr
    assert not (tmp_path / "bad.safetensors").exists()


def test_rest_training_trains_through_the_noise_and_records_it(svc: LocalService, qc: Client) -> None:
    spec = {"width": [2, 1], "reps": 1}
    job = qc.train(spec, function="sin_cos", samples=16, steps=2, seed=0, noise=DEVICE, qubits="auto")
    assert job.options["noise"] == {"device": DEVICE, "qubits": BEST}  # auto resolved before the job is stored
    done = qc.wait(job.id, timeout=120, progress=False)
    assert done.state == JobState.SUCCEEDED, done.error
    model = qc.model(done.model_id)
    assert model.noise == {"device": DEVICE, "qubits": BEST} and model.source == "train"
    with session_scope(svc.settings.resolved_database_url) as session:
        blob = session.scalar(select(StoredModel.blob).where(StoredModel.id == model.id))
    assert model_noise(blob) == model.noise
    function = get_function("sin_cos")
    x = function.sample(16, seed=0)
    local = build_model(parse_spec(spec), seed=0)
    fit(local, x.float(), function(x).float(), optimizer="lbfgs", steps=2, progress=False,
        noise=emulated_device(DEVICE))  # what the worker ran, in one process
    for name, tensor in model_from_bytes(blob).state_dict().items():
        torch.testing.assert_close(tensor, local.state_dict()[name], rtol=0, atol=1e-6)


def test_an_uploaded_noise_aware_file_keeps_its_noise(qc: Client, tmp_path: Path) -> None:
    path = tmp_path / "aware.safetensors"
    save_model(qkan(seed=5).float(), str(path), noise={"device": DEVICE, "qubits": [2, 3]})
    assert qc.upload_model(path).noise == {"device": DEVICE, "qubits": [2, 3]}
    save_model(qkan(seed=6).float(), str(path))
    assert qc.upload_model(path).noise is None


@pytest.mark.parametrize(("spec", "fields", "field", "words"), [
    ({"width": [2, 1]}, {"noise": "fake_nowhere"}, "noise", "no IBM fake device 'fake_nowhere'"),
    ({"width": [2, 1]}, {"noise": DEVICE, "qubits": "0,99"}, "qubits", "distinct qubits in 0..14"),
    ({"width": [2, 1]}, {"noise": DEVICE, "qubits": "zero"}, "qubits", "comma-separated"),
    ({"width": [2, 1]}, {"qubits": "0,1"}, "qubits", "give noise too"),
    ({"kind": "qkan-lstm", "hidden": 1, "window": 2}, {"noise": DEVICE}, "noise", "sequence models"),
])
def test_bad_noise_or_qubits_are_422_naming_the_field_and_store_nothing(
        qc: Client, spec: dict, fields: dict, field: str, words: str) -> None:
    before = (qc.jobs().total, qc.models().total)
    function = "damped_shm" if spec.get("kind") else "sin_cos"
    response = qc.http.post("/v1/models/train", data={"spec": json.dumps(spec), "function": function, **fields})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and words in error["message"], error
    assert (qc.jobs().total, qc.models().total) == before
