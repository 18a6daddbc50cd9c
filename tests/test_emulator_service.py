"""The noisy emulator through the service (issue 14 items 1 and 4): ``emulate:*`` without shots gives exact noisy
outputs (standard errors 0) as in-process runs do, read-out mitigation works on them, the provider filter knows
``emulate``, and a comparison takes an emulator as its reference, so "is the device doing what its calibration
says?" is one χ² p-value.

Real service: system Redis, PostgreSQL, one Celery worker process.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_inputs, make_model
from qkan_orch.backends import get_backend, run_plan
from qkan_orch.circuits import plan_for
from qkan_orch.client import Client, JobState
from qkan_orch.mitigation import Mitigation, mitigated
from qkan_orch.models import load_model, save_model
from qkan_orch.service.local import LocalService

MELBOURNE = "emulate:fake_melbourne"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(make_model(width=[2, 2, 1], reps=2), str(path))
    return path


@pytest.fixture(scope="module")
def model(saved: Path) -> torch.nn.Module:
    """The model as the service's worker loads it, so an in-process run does the same arithmetic."""
    return load_model(str(saved))


@pytest.fixture(scope="module")
def model_id(qc: Client, saved: Path) -> str:
    return qc.upload_model(saved).id


def in_process(model: torch.nn.Module, x: np.ndarray, backend: str, mitigation: str = "none",
               options: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    inner = get_backend(backend)
    report = run_plan(plan_for(model, x), mitigated(inner, Mitigation.parse(mitigation, inner.capabilities())),
                      options=options)
    return report.outputs, report.stderr


def finished(qc: Client, job_id: str) -> tuple[np.ndarray, np.ndarray]:
    done = qc.wait(job_id, timeout=120, progress=False)
    assert done.state == JobState.SUCCEEDED, done.error
    outputs, stderr = qc.result(job_id)
    return np.asarray(outputs), np.asarray(stderr)


@pytest.mark.parametrize("backend", [MELBOURNE, "emulate:dm"])
def test_without_shots_the_outputs_are_exact_and_equal_an_in_process_run(qc: Client, model: torch.nn.Module,
                                                                         model_id: str, backend: str) -> None:
    x = make_inputs(10, 2)
    job = qc.submit(model_id, x, backend=backend, mitigation="none")
    assert job.shots is None and job.estimate is not None and job.estimate.shots == 0
    outputs, stderr = finished(qc, job.id)
    expected, _ = in_process(model, x, backend)
    assert not stderr.any()
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=1e-9)
    exact, _ = in_process(model, x, "exact")
    assert np.abs(outputs - exact).max() > 0.01  # the device's noise is in them


def test_with_shots_the_outputs_are_sampled(qc: Client, model: torch.nn.Module, model_id: str) -> None:
    x = make_inputs(10, 2)
    job = qc.submit(model_id, x, backend=MELBOURNE, shots=4000, mitigation="none", options={"seed": 7})
    assert job.shots == 4000 and job.estimate is not None and job.estimate.shots > 0
    outputs, stderr = finished(qc, job.id)
    expected, _ = in_process(model, x, MELBOURNE)
    assert (stderr > 0).all()
    z = (outputs - expected) / stderr  # the exact noisy outputs within the reported errors
    assert np.mean(z**2) < 4.0  # mean of 10 χ²₁: 4 is about 7 sd above its mean of 1


def test_readout_mitigation_without_shots_recovers_the_exact_outputs(qc: Client, model: torch.nn.Module,
                                                                      model_id: str) -> None:
    x = make_inputs(10, 2)
    job = qc.submit(model_id, x, backend=MELBOURNE, mitigation="readout")
    assert job.shots is None and job.mitigation == {"method": "readout", "calibration_shots": 10_000}
    outputs, stderr = finished(qc, job.id)
    assert not stderr.any()  # the calibration is exact too
    expected, _ = in_process(model, x, MELBOURNE, "readout")
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=1e-9)
    exact, _ = in_process(model, x, "exact")
    raw, _ = in_process(model, x, MELBOURNE)
    rmse = float(np.sqrt(np.mean((outputs - exact) ** 2)))
    # read-out error inverted exactly; what is left is the gate noise of 2 reps on melbourne (≈ 0.02 here,
    # 0.13 uncorrected)
    assert rmse < 0.04 < 3 * 0.04 < float(np.sqrt(np.mean((raw - exact) ** 2)))


def test_readout_correction_of_exact_probabilities_inverts_the_readout_exactly(model: torch.nn.Module) -> None:
    # emulate:dm without depolarizing: the read-out bit flip is the only noise (the calibration's X gate is then
    # noiseless too), so the corrected outputs are the noiseless ones; float32 glue layers bound the agreement
    x = make_inputs(6, 2)
    corrected, stderr = in_process(model, x, "emulate:dm", "readout", options={"depolarizing": 0.0})
    noiseless, _ = in_process(model, x, "emulate:dm", options={"noise": False})
    flipped, _ = in_process(model, x, "emulate:dm", options={"depolarizing": 0.0})
    assert not stderr.any() and np.abs(flipped - noiseless).max() > 0.01
    np.testing.assert_allclose(corrected, noiseless, rtol=0, atol=1e-6)
    # with depolarizing noise too, read-out + ZNE lands closer to exact than read-out alone
    exact, _ = in_process(model, x, "exact")
    readout, _ = in_process(model, x, "emulate:dm", "readout")
    zne, zne_stderr = in_process(model, x, "emulate:dm", "readout+zne")
    assert not zne_stderr.any() and np.abs(zne - exact).max() < np.abs(readout - exact).max()


def test_the_provider_filter_knows_emulate(svc: LocalService, qc: Client, tmp_path: Path) -> None:
    listed = qc.backends(provider="emulate")
    names = [b.name for b in listed]
    assert "emulate:dm" in names and MELBOURNE in names and all(n.startswith("emulate:") for n in names)
    assert all(b.kind == "noisy simulator" and "exact probabilities without shots" in b.noise for b in listed)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("QKAN_")}, "XDG_CACHE_HOME": str(tmp_path)}
    cli = [str(Path(sys.executable).parent / "qkan-orch"), "backends", "--provider", "emulate"]
    rows = json.loads(subprocess.run([*cli, "--json"], capture_output=True, text=True, env=env, timeout=300,
                                     check=True).stdout)
    assert [r["name"] for r in rows] == names
    melbourne = next(r for r in rows if r["name"] == MELBOURNE)
    assert melbourne["qubits"] == 15 and melbourne["default_pack"] == 4 and melbourne["kind"] == "noisy simulator"
    table = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=300, check=True).stdout
    line = next(row for row in table.splitlines() if row.startswith(f"{MELBOURNE} "))
    assert line.split()[1:5] == ["noisy", "simulator", "15", "4"]


@pytest.fixture(scope="module")
def device_comparison(qc: Client, model_id: str) -> dict[str, float]:
    """aer:fake_melbourne (2·10⁴ shots, its default 4 best read-out qubits, unmitigated) against the emulator of
    the same device on the same qubits and against exact: the χ² p-value of each."""
    x = make_inputs(12, 2)
    p_values = {}
    for reference in (MELBOURNE, "exact"):
        created = qc.compare(model_id, x, ["aer:fake_melbourne"], reference=reference, shots=20_000,
                             mitigation="none", options={"aer:fake_melbourne": {"seed": 11}})
        assert created.reference.job.shots is None and created.reference.job.mitigation == {"method": "none"}
        done = qc.wait_comparison(created.id, timeout=120)
        (compared,) = done.backends
        assert compared.job.state == JobState.SUCCEEDED and compared.agreement is not None
        assert compared.job.shots == 20_000
        p_values[reference] = compared.agreement.p_value
    return p_values


def test_a_device_agrees_with_its_emulator_and_not_with_exact(device_comparison: dict[str, float]) -> None:
    # consistent results give a uniform p: below 1e-3 one time in 1000 if Aer samples what the emulator computes
    assert device_comparison[MELBOURNE] >= 1e-3
    assert device_comparison["exact"] < 1e-6  # the device's noise is many σ of 2·10⁴ shots


@pytest.mark.parametrize(("change", "field"), [
    ({"reference": "aer:fake_melbourne", "backends": ["exact"]}, "reference"),
    ({"reference": "braket:local_dm", "backends": ["exact"]}, "reference"),
    ({"reference": "emulate:fake_nowhere"}, "reference"),
    ({"reference": MELBOURNE, "backends": [MELBOURNE]}, "backends[0]"),
    ({"reference": MELBOURNE, "mitigation_per_backend": {MELBOURNE: "readout"}}, f"mitigation_per_backend.{MELBOURNE}"),
])
def test_sampled_references_are_refused_naming_the_field(qc: Client, model_id: str, change: dict,
                                                         field: str) -> None:
    body = {"model_id": model_id, "inputs": [[0.1, 0.2]], "backends": ["aer:fake_melbourne"], "shots": 100,
            **change}
    response = qc.http.post("/v1/comparisons", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field, response.text
    if change["reference"] in ("aer:fake_melbourne", "braket:local_dm"):
        assert "only samples" in error["message"] and "emulate:" in error["message"]
