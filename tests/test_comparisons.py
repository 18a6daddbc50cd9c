"""/v1/comparisons (issue 12 items 1–2, first part): one job per backend through the usual queues, and how each
agrees with the reference once both succeeded.

Real service: system Redis, PostgreSQL, one Celery worker process. The agreement the service reports is
checked against comparisons.agreement recomputed here from the jobs' own results.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import func, select

from conftest import make_inputs, make_model
from qkan_orch.client import ApiError, Client, JobState
from qkan_orch.comparisons import agreement
from qkan_orch.models import save_model
from qkan_orch.service.local import LocalService
from qkan_orch.service.store.arrays import unpack_arrays
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.tables import Comparison, Job, JobResult

pytestmark = [pytest.mark.usefixtures("plugin_backends"), pytest.mark.service(concurrency=2)]


def upload(client: Client, folder: Path) -> str:
    path = folder / "model.safetensors"
    save_model(make_model(width=[2, 2, 1], reps=2), str(path))
    return client.upload_model(path).id


@pytest.fixture(scope="module")
def model(qc: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    return upload(qc, tmp_path_factory.mktemp("model"))


def stored(svc: LocalService) -> tuple[int, int]:
    with session_scope(svc.settings.resolved_database_url) as session:
        return (session.scalar(select(func.count()).select_from(Comparison)),
                session.scalar(select(func.count()).select_from(Job)))


def stored_arrays(svc: LocalService, job_id: str) -> dict[str, np.ndarray]:
    with session_scope(svc.settings.resolved_database_url) as session:
        return unpack_arrays(session.get(JobResult, job_id).arrays)


def test_each_backend_runs_as_a_job_and_agrees_as_its_results_say(svc: LocalService, qc: Client,
                                                                    model: str) -> None:
    x = make_inputs(12, 2)
    created = qc.compare(model, x, ["aer", "pennylane:default.qubit"], shots=3000, mitigation="none",
                         options={"aer": {"seed": 3}, "pennylane:default.qubit": {"seed": 4}})
    assert created.reference.backend == "exact"
    assert [c.backend for c in created.backends] == ["aer", "pennylane:default.qubit"]
    jobs = [created.reference.job, *(c.job for c in created.backends)]
    assert created.estimate.shots == sum(j.estimate.shots for j in jobs) > 0
    assert created.estimate.executions == sum(j.estimate.executions for j in jobs)
    done = qc.wait_comparison(created.id, timeout=300)
    assert done.finished and all(c.job.state == JobState.SUCCEEDED for c in [done.reference, *done.backends])
    ref = qc.job_result(done.reference.job.id)
    for compared in done.backends:
        result = qc.job_result(compared.job.id, layers=True)
        expected = agreement(np.asarray(result.outputs), np.asarray(result.stderr), np.asarray(ref.outputs),
                             np.asarray(ref.stderr))
        got = compared.agreement
        assert got is not None and got.n == 12 and compared.raw_agreement is None  # no mitigation ran
        assert (got.rmse, got.sigma, got.p_value) == pytest.approx((expected.rmse, expected.sigma, expected.p_value))
        assert got.slope == pytest.approx(expected.slope) and got.mean_z2 == pytest.approx(expected.mean_z2)
        # ideal simulators: the shot errors explain the differences, so p is uniform; below 1e-3 one time in 1000
        assert got.p_value > 1e-3
        assert compared.layers is not None and [layer.layer for layer in compared.layers] == [0, 1]
        assert compared.layers[-1].output_rmse == pytest.approx(got.rmse)  # the last layer's output is the output
        ours, theirs = stored_arrays(svc, compared.job.id), stored_arrays(svc, done.reference.job.id)
        for layer in compared.layers:  # edge errors recomputed from the activations both jobs kept
            act = ours[f"activation.{layer.layer}"]
            assert act.shape == ((12, 2, 2), (12, 1, 2))[layer.layer]  # samples × out × in of [2, 2, 1]
            per_edge = np.sqrt(np.mean((act - theirs[f"activation.{layer.layer}"]) ** 2, axis=0))
            assert layer.activation_rmse == pytest.approx(np.sqrt(np.mean(per_edge**2)))
            worst = sorted(((float(r), o, i) for (o, i), r in np.ndenumerate(per_edge)), reverse=True)[:5]
            assert [(e.output, e.input) for e in layer.worst_edges] == [(o, i) for _, o, i in worst]
            assert [e.rmse for e in layer.worst_edges] == pytest.approx([r for r, _, _ in worst])
    assert qc.comparisons().items[0].id == created.id


def test_mitigated_backends_report_raw_agreement_too(svc: LocalService, qc: Client, model: str) -> None:
    # one mitigation for the comparison, overridden for the noisy backend (as the demo runs it)
    created = qc.compare(model, make_inputs(4, 2), ["aer", "aer:fake_manila"], shots=2000, mitigation="none",
                         mitigation_per_backend={"aer:fake_manila": "readout"},
                         options={"aer:fake_manila": {"seed": 5}})
    done = qc.wait_comparison(created.id, timeout=300)
    ideal, compared = done.backends
    assert compared.job.mitigation["method"] == "readout" and done.reference.job.mitigation["method"] == "none"
    assert ideal.job.mitigation["method"] == "none" and ideal.raw_agreement is None
    assert compared.agreement is not None and compared.raw_agreement is not None
    assert compared.raw_agreement.rmse != compared.agreement.rmse
    # where each worst edge ran: on the fake device's slice (5 qubits), the modal qubit of its 4 samples; the
    # ideal simulator places nothing
    placed = [e for layer in compared.layers or [] for e in layer.worst_edges]
    assert placed and all(e.qubit in range(5) and e.qubit_share * 4 in (1, 2, 3, 4) for e in placed), placed
    assert all(e.qubit is None for layer in ideal.layers or [] for e in layer.worst_edges)
    with session_scope(svc.settings.resolved_database_url) as session:
        kept = session.get(Comparison, created.id).settings
    assert kept["mitigation_per_backend"] == {"aer:fake_manila": "readout"}


@pytest.mark.parametrize(("change", "field"), [
    ({"backends": []}, "backends"),
    ({"backends": [f"test:counting{i}" for i in range(17)]}, "backends"),
    ({"backends": ["aer", "aer"]}, "backends[1]"),
    ({"backends": ["aer", "exact"]}, "backends[1]"),
    ({"backends": ["aer", "aer:fake_nowhere"]}, "backends[1]"),
    ({"reference": "aer:fake_nowhere"}, "reference"),
    ({"reference": "aer"}, "reference"),
    ({"reference": "braket:local_dm", "backends": ["exact"]}, "reference"),
    ({"options": {"braket:local": {"seed": 1}}}, "options.braket:local"),
    ({"options": {"aer": {"color": 1}}}, "options.aer.color"),
    ({"inputs": [[0.1, 0.2], [0.3]]}, "inputs"),
    ({"inputs": [[0.1, 0.2, 0.3]]}, "inputs"),
    ({"mitigation": "everything"}, "mitigation"),
    ({"mitigation_per_backend": {"braket:local": "zne"}}, "mitigation_per_backend.braket:local"),
    ({"mitigation_per_backend": {"exact": "none"}}, "mitigation_per_backend.exact"),
    ({"mitigation_per_backend": {"aer": {"method": "zne", "extrapolation": "cubic"}}},
     "mitigation_per_backend.aer.extrapolation"),
])
def test_bad_comparisons_are_422_naming_the_field_and_store_nothing(svc: LocalService, qc: Client, model: str,
                                                                    change: dict, field: str) -> None:
    body = {"model_id": model, "inputs": [[0.1, 0.2]], "backends": ["aer"], "shots": 100, **change}
    before = stored(svc)
    response = qc.http.post("/v1/comparisons", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == field, response.text
    assert stored(svc) == before


def test_the_budget_covers_every_job_or_none_is_stored(svc: LocalService, tmp_path: Path) -> None:
    # exact uses no shots; each aer job 2 rows × 100 shots: a cap of 300 fits one backend, not two
    with Client(svc.url, svc.create_key("capped", max_shots=300)) as capped:
        model = upload(capped, tmp_path)
        before = stored(svc)
        with pytest.raises(ApiError) as err:
            capped.compare(model, [[0.1, 0.2]], ["aer", "braket:local"], shots=100, mitigation="none")
        assert err.value.status == 402 and stored(svc) == before
        assert capped.compare(model, [[0.1, 0.2]], ["aer"], shots=100, mitigation="none").estimate.shots == 200


def test_another_key_cannot_see_it_and_delete_cancels_its_jobs(svc: LocalService, qc: Client, model: str,
                                                                tmp_path: Path) -> None:
    waiting = {"pending_polls": 10_000, "log": str(tmp_path / "pending.log")}
    created = qc.compare(model, [[0.1, 0.2]], ["test:pending"], options={"test:pending": waiting})
    with Client(svc.url, svc.create_key("someone else")) as other:
        with pytest.raises(ApiError) as err:
            other.comparison(created.id)
        assert err.value.status == 404 and other.comparisons().total == 0
    qc.cancel_comparison(created.id)
    done = qc.wait_comparison(created.id, timeout=120)
    (pending,) = done.backends
    assert pending.job.state == JobState.CANCELLED and pending.agreement is None


def test_the_readme_comparison_example_runs_as_printed(qc: Client, model: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL) if "qc.compare(" in b]
    namespace = {"qc": qc, "model": SimpleNamespace(id=model), "x": make_inputs(4, 2)}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["aer", "aer:fake_melbourne"]


def cli(*args: str, svc: LocalService, key: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("QKAN_")}, "QKAN_URL": svc.url,
           "QKAN_API_KEY": key}
    return subprocess.run([str(Path(sys.executable).parent / "qkan-orch"), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_the_compare_command_writes_the_report_and_figures(svc: LocalService, tmp_path: Path) -> None:
    key = svc.create_key("cli")
    with Client(svc.url, key) as own:
        model = upload(own, tmp_path)
    np.save(tmp_path / "x.npy", make_inputs(6, 2))
    common = ("compare", "--model", model, "--inputs", str(tmp_path / "x.npy"), "--shots", "500", "--quiet")
    done = cli(*common, "--backends", "aer,aer:fake_manila", "--mitigation", "readout",
               "--options", '{"aer": {"seed": 1}}', "--out", str(tmp_path / "out"), svc=svc, key=key)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [c["backend"] for c in report["comparison"]["backends"]] == ["aer", "aer:fake_manila"]
    assert len(report["reference"]["outputs"]) == 6
    assert all(len(report["backends"][b]["outputs"]) == 6 for b in ("aer", "aer:fake_manila"))
    assert report["backends"]["aer:fake_manila"]["raw_outputs"] is not None  # read-out correction ran there
    for figure in ("outputs.png", "residuals.png", "activations.png"):
        drawn = (tmp_path / "out" / figure).read_bytes()
        assert drawn[:8] == b"\x89PNG\r\n\x1a\n" and len(drawn) > 10_000, figure  # axes and data, not blank
    # the heatmaps' numbers: per layer out × in of the [2, 2, 1] model, as the service's worst edges say
    for compared in report["comparison"]["backends"]:
        edges = report["backends"][compared["backend"]]["edge_rmse"]
        assert [np.shape(e) for e in edges] == [(2, 2), (1, 2)]
        for layer, per_edge in zip(compared["layers"], edges, strict=True):
            worst = layer["worst_edges"][0]
            assert per_edge[worst["output"]][worst["input"]] == pytest.approx(worst["rmse"])
            assert np.max(per_edge) == pytest.approx(worst["rmse"])
    table = done.stdout.splitlines()
    assert table[0] == report["comparison"]["id"] and table[-1].startswith("aer:fake_manila")
    refused = cli(*common, "--backends", "aer,aer", "--out", str(tmp_path / "never"), svc=svc, key=key)
    assert refused.returncode == 2 and "backends[1]" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert not (tmp_path / "never").exists()
