"""Sequence models through the service (issue 13 item 5, first part): (N, T, F) windows by JSON and .npy, one
round per time step, the result equal to the model's forward on the exact backend; bad windows are 422 naming
``inputs`` and store nothing; a classical LSTM is refused by name (training sequence models through REST:
test_model_training_service.py).

Real service: system Redis, PostgreSQL, one Celery worker process.
"""

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sequence_plan import sequence_model, windows

from qkan_orch.client import ApiError, Client, JobState
from qkan_orch.models import SequenceModel, build_model, parse_spec, save_model
from qkan_orch.service.local import LocalService


@pytest.fixture(scope="module")
def model() -> SequenceModel:
    return sequence_model(layers=2, window=4, in_dim=2)


@pytest.fixture(scope="module")
def model_id(qc: Client, model: SequenceModel, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("model") / "lstm.safetensors"
    save_model(model, str(path))
    return qc.upload_model(path).id


def test_windows_run_one_round_per_step_and_equal_the_forward_on_exact(qc: Client, model: SequenceModel,
                                                                        model_id: str) -> None:
    x = windows(3, 4, 2)
    job = qc.submit(model_id, x, backend="exact")
    assert job.rounds_total == 4 + 2 - 1  # T steps, the second layer one step behind
    done = qc.wait(job.id, timeout=120, progress=False)
    assert done.state == JobState.SUCCEEDED, done.error
    assert len(done.rounds) == 5 and [r.number for r in done.rounds] == list(range(5))
    outputs, stderr = qc.result(job.id)
    stored = model.float()  # as the service stores it: float32 parameters, evaluated in float64 from here on
    expected = stored.double()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=1e-6)
    assert not np.asarray(stderr).any()


def test_windows_upload_as_npy(svc: LocalService, qc: Client, model_id: str) -> None:
    buffer = io.BytesIO()
    np.save(buffer, windows(2, 4, 2))
    response = qc.http.post("/v1/jobs", data={"model_id": model_id, "backend": "exact"},
                            files={"inputs_file": ("x.npy", buffer.getvalue())})
    assert response.status_code == 202, response.text
    assert response.json()["rounds_total"] == 5 and response.json()["samples"] == 2


@pytest.mark.parametrize(("inputs", "words"), [
    (np.zeros((2, 5, 2)).tolist(), "windows of 5 steps; the model takes 4"),
    (np.zeros((2, 4, 3)).tolist(), "3 features per step"),
    (np.zeros((2, 8)).tolist(), "got 2-D"),
    ([[[0.0, 0.0]] * 4, [[0.0, 0.0]] * 3], "different lengths"),
])
def test_bad_windows_are_422_naming_inputs(qc: Client, model_id: str, inputs: list, words: str) -> None:
    before = qc.jobs().total
    response = qc.http.post("/v1/jobs", json={"model_id": model_id, "inputs": inputs, "backend": "exact"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == "inputs" and words in error["message"]
    assert qc.jobs().total == before


def test_a_classical_lstm_is_refused_by_name(qc: Client, tmp_path: Path) -> None:
    path = tmp_path / "lstm.safetensors"
    save_model(build_model(parse_spec({"kind": "lstm", "hidden": 2, "window": 3})), str(path))
    lstm = qc.upload_model(path).id
    with pytest.raises(ApiError) as refused:
        qc.submit(lstm, np.zeros((2, 3)), backend="exact")
    assert refused.value.status == 422 and refused.value.field == "model_id"
