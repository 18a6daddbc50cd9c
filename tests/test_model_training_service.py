"""Training sequence models and layer extension through the service (issue 13 item 2): ``POST /v1/models/train``
takes a sequence spec with a built-in series (cut and split as the CLI does) or a file of windows, the stored model
runs on ``exact`` and equals its own forward; ``POST /v1/models/{id}/extend`` and ``qkan-orch extend`` keep the
function; every refusal is a 422 (or a one-line CLI error) naming the field, with nothing stored or written.

Real service: system Redis, PostgreSQL, one Celery worker process.
"""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select
from test_sequence_plan import sequence_model

from conftest import make_model
from qkan_orch.client import ApiError, Client, JobState
from qkan_orch.models import Model, build_model, model_from_bytes, parse_spec, save_model
from qkan_orch.models.sequences import SERIES, split_by_time, windows
from qkan_orch.service.local import LocalService
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.tables import StoredModel
from support.cli_process import cli

LSTM = {"kind": "qkan-lstm", "hidden": 2, "window": 4, "gate": {"reps": 1}}


def stored(svc: LocalService, model_id: str) -> Model:
    """The model exactly as the service stored it (float32 parameters), evaluated in float64 from here on."""
    with session_scope(svc.settings.resolved_database_url) as session:
        blob = session.scalar(select(StoredModel.blob).where(StoredModel.id == model_id))
    return model_from_bytes(blob).double()


def on_exact(qc: Client, model_id: str, x: np.ndarray) -> np.ndarray:
    job = qc.wait(qc.submit(model_id, x, backend="exact").id, timeout=120, progress=False)
    assert job.state == JobState.SUCCEEDED, job.error
    return qc.result(job.id)[0]


def trained(qc: Client, spec: dict, **params: object) -> str:
    job = qc.train(spec, **params)  # type: ignore[arg-type]
    done = qc.wait(job.id, timeout=120, progress=False)
    assert done.state == JobState.SUCCEEDED, done.error
    return job.id


def test_a_qkan_lstm_trains_on_a_series_split_as_the_cli_splits_it_and_runs_on_exact(svc: LocalService,
                                                                                     qc: Client) -> None:
    job_id = trained(qc, LSTM, function="damped_shm", samples=30, steps=3, optimizer="lbfgs", name="shm")
    body = qc.job_result(job_id)
    model = qc.model(body.model_id)  # type: ignore[arg-type]
    assert (model.name, model.source, model.spec["kind"], model.spec["window"]) == ("shm", "train", "qkan-lstm", 4)
    assert len(body.losses) == 3 and body.losses[-1] < body.losses[0]  # type: ignore[arg-type]
    # the first loss is the untrained model's MSE on the CLI's training part: 30 windows, the last 6 held out
    x, y = windows(SERIES["damped_shm"](30 + 4), 4)
    x_train, y_train = split_by_time(x, y)[:2]
    untrained = build_model(parse_spec(LSTM), seed=0)
    with torch.no_grad():
        first = float(torch.mean((untrained(torch.from_numpy(x_train).float()) - torch.from_numpy(y_train)) ** 2))
    assert len(x_train) == 24 and body.losses[0] == pytest.approx(first, rel=1e-5)  # type: ignore[index]
    probe = x[-3:]
    expected = stored(svc, model.id)(torch.from_numpy(probe)).detach().numpy()
    np.testing.assert_allclose(on_exact(qc, model.id, probe), expected, rtol=0, atol=1e-6)


def test_windows_from_an_uploaded_csv_are_all_trained_on(qc: Client, tmp_path: Path) -> None:
    series = SERIES["bessel_j0"](40)
    x, y = windows(series, 4)
    table = np.hstack([x[:, :, 0], y])  # one window per row, its target last
    np.savetxt(tmp_path / "w.csv", table, delimiter=",")
    spec = {"kind": "hqkan-lstm", "hidden": 2, "window": 4, "latent": 1, "gate": {"reps": 1}}
    job_id = trained(qc, spec, csv=tmp_path / "w.csv", steps=2, optimizer="adam")
    untrained = build_model(parse_spec(spec), seed=0)
    with torch.no_grad():
        x, y = torch.from_numpy(table[:, :-1, None]).float(), torch.from_numpy(table[:, -1:]).float()
        first = float(torch.mean((untrained(x) - y) ** 2))
    assert qc.job_result(job_id).losses[0] == pytest.approx(first, rel=1e-5)  # type: ignore[index]


def test_hqkan_and_a_classical_lstm_train_through_rest(svc: LocalService, qc: Client) -> None:
    spec = {"kind": "hqkan", "in_dim": 2, "out_dim": 1, "qkan": {"width": [2, 2], "reps": 1}}
    model_id = qc.job_result(trained(qc, spec, function="sin_cos", samples=32, steps=2)).model_id
    x = np.random.default_rng(0).uniform(-1, 1, (4, 2))
    expected = stored(svc, model_id)(torch.from_numpy(x)).detach().numpy()  # type: ignore[arg-type]
    np.testing.assert_allclose(on_exact(qc, model_id, x), expected, rtol=0, atol=1e-6)  # type: ignore[arg-type]
    lstm = qc.job_result(trained(qc, {"kind": "lstm", "hidden": 2, "window": 4}, function="bessel_j1", samples=20,
                                 steps=2)).model_id
    assert qc.model(lstm).spec["kind"] == "lstm"  # type: ignore[arg-type]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(("spec", "fields", "files", "field", "words"), [
    (LSTM, {}, {"csv": ("w.csv", b"0,0.1,0.2,0.3,0.4,0.5\n")}, "csv", "windows of 5 steps; the spec's window is 4"),
    (LSTM, {}, {"csv": ("w.npy", _npy(np.zeros((3, 5, 1))))}, "csv", "a 3-D array"),
    (LSTM, {"function": "sin"}, None, "function", "'sin' is not a sequence"),
    ({"width": [1, 2, 1]}, {"function": "damped_shm"}, None, "function", "is a sequence"),
    ({**LSTM, "in_dim": 2}, {"function": "damped_shm"}, None, "spec", "one value per step"),
    (LSTM, {"function": "damped_shm", "samples": "1"}, None, "samples", "leave none for training"),
    (LSTM, {"function": "damped_shm", "samples": "100000"}, None, "samples", "windows × 4 steps × 24 gate edges"),
    ({"kind": "lstm", "hidden": 2, "window": 1000}, {"function": "damped_shm", "samples": "100000"}, None, "samples",
     "of data per job"),
    ({"kind": "lstm", "hidden": 2, "window": 10**7}, {"function": "damped_shm"}, None, "spec.window",
     "time steps exceed this service's limit"),
])
def test_bad_training_requests_are_422_naming_the_field_and_store_nothing(
        qc: Client, spec: dict, fields: dict, files: dict | None, field: str, words: str) -> None:
    before = (qc.jobs().total, qc.models().total)
    response = qc.http.post("/v1/models/train", data={"spec": json.dumps(spec), **fields},
                            files=files)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field and words in error["message"], error
    assert (qc.jobs().total, qc.models().total) == before


@pytest.fixture(scope="module")
def lstm_id(qc: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("model") / "lstm.safetensors"
    save_model(sequence_model(window=4, in_dim=1, hidden=2), str(path))  # gates at reps 2
    return qc.upload_model(path, name="gates").id


def test_extend_through_rest_and_the_client_keeps_the_outputs_on_exact(svc: LocalService, qc: Client,
                                                                        lstm_id: str, tmp_path: Path) -> None:
    response = qc.http.post(f"/v1/models/{lstm_id}/extend", data={"reps": "4"})  # a form field
    assert response.status_code == 201, response.text
    longer = response.json()
    assert longer["name"] == "gates-reps4" and longer["spec"]["gate"]["reps"] == 4 and longer["id"] != lstm_id
    x = np.random.default_rng(1).uniform(-1, 1, (3, 4, 1))
    np.testing.assert_allclose(on_exact(qc, longer["id"], x), on_exact(qc, lstm_id, x), rtol=0, atol=1e-6)

    path = tmp_path / "hqkan.safetensors"
    save_model(make_model(kind="hqkan", in_dim=2, out_dim=1, qkan={"width": [2, 2], "reps": 1}), str(path))
    hqkan = qc.upload_model(path).id
    extended = qc.extend(hqkan, 3, name="hqkan-3")  # JSON
    assert extended.name == "hqkan-3" and extended.spec["qkan"]["reps"] == 3
    x = np.random.default_rng(2).uniform(-1, 1, (4, 2))
    np.testing.assert_allclose(on_exact(qc, extended.id, x), on_exact(qc, hqkan, x), rtol=0, atol=1e-6)


def test_extend_refusals_name_the_field_and_store_nothing(svc: LocalService, qc: Client, lstm_id: str,
                                                          tmp_path: Path) -> None:
    models = {}
    for name, spec in (("real", {"width": [1, 1], "reps": 1, "ansatz": "real"}),
                       ("lstm", {"kind": "lstm", "hidden": 2, "window": 3})):
        save_model(build_model(parse_spec(spec)), str(tmp_path / f"{name}.safetensors"))
        models[name] = qc.upload_model(tmp_path / f"{name}.safetensors").id
    before = qc.models().total
    for model_id, reps, field, words in [
        (lstm_id, 2, "reps", "must exceed the current 2"),
        (lstm_id, 101, "reps", "exceeds this service's limit of 100 (spec.gate.reps of the extended model)"),
        (models["real"], 2, "model_id", "'real' ansatz"),
        (models["lstm"], 2, "model_id", "no QKAN layer"),
    ]:
        with pytest.raises(ApiError) as refused:
            qc.extend(model_id, reps)
        assert (refused.value.status, refused.value.field) == (422, field) and words in refused.value.message
    response = qc.http.post(f"/v1/models/{lstm_id}/extend", json={"reps": "many"})
    assert response.status_code == 422 and response.json()["error"]["field"] == "reps"
    with Client(svc.url, svc.create_key("other")) as other, pytest.raises(ApiError) as refused:
        other.extend(lstm_id, 4)
    assert refused.value.status == 404
    assert qc.models().total == before


def test_cli_extend_prints_the_difference_and_refuses_in_one_line(tmp_path: Path) -> None:
    save_model(sequence_model(window=3, in_dim=1, hidden=2), str(tmp_path / "in.safetensors"))
    done = cli("extend", "--model", "in.safetensors", "--reps", "5", "--out", "out.safetensors", env={},
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    difference = float(done.stderr.split("max |difference| of outputs ")[1].split()[0])
    assert difference < 1e-6 and model_from_bytes((tmp_path / "out.safetensors").read_bytes()).spec.gate.reps == 5
    refused = cli("extend", "--model", "in.safetensors", "--reps", "2", "--out", "bad.safetensors", env={},
                  cwd=tmp_path)
    assert refused.returncode == 2 and not (tmp_path / "bad.safetensors").exists()
    assert refused.stderr == "qkan-orch: error: reps: new reps (2) must exceed the current 2\n"
