"""Calibration snapshots (issue 14 item 2): stored once per (backend, calibration time) when a job is placed on
``ibm:fake_torino``, listed and read at /v1/calibrations, uploaded with a schema check, and run as
``emulate:calibration:<id>``, which reproduces the hardware job.

Agreement bound: the hardware job and the emulator job each report a standard error per output (shot noise,
delta method); they run the same edge circuits on the same qubit with the same noise model, so their outputs
differ by shot noise only: |y_ibm − y_emu| ≤ 5·σ with σ = √(se_ibm² + se_emu²), per output.
"""

import copy
from datetime import datetime

import numpy as np
import pytest

from conftest import make_inputs, make_model
from qkan_orch.backends import calibration_snapshot as cs
from qkan_orch.backends.emulator import _fake_programs
from qkan_orch.backends.emulator_noise import ibm_noise
from qkan_orch.backends.qiskit_common import best_qubits, compact_target, fake_backend
from qkan_orch.circuits import FeedForwardPlan
from qkan_orch.client import ApiError, Client, JobState
from qkan_orch.models import save_model
from qkan_orch.models.errors import InputError
from qkan_orch.service.local import LocalService
from service_env import stack_env

SHOTS = 4000
DEVICE = "fake_torino"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("calibrations")
    with stack_env("system-redis+postgresql", tmp) as env:
        local = LocalService(tmp, env, concurrency=2)
        local.start(workers=1)
        try:
            with Client(local.url, local.create_key()) as qc:
                model = make_model(width=[3, 2], reps=2, fast_measure=False)
                save_model(model.float(), str(tmp / "m.safetensors"))
                yield qc, qc.upload_model(tmp / "m.safetensors").id
        finally:
            local.stop()


def torino_document() -> cs.CalibrationDocument:
    fake = fake_backend(DEVICE)
    return cs.from_target(f"ibm:{DEVICE}", fake.target, fake.properties().last_update_date)


@pytest.mark.parametrize("device", ["fake_torino", "fake_sherbrooke"])
def test_document_noise_equals_ibm_noise_of_the_target(device: str) -> None:
    """Target → document → JSON → document → DeviceNoise is ibm_noise of the compact target, to 1e-12."""
    target = fake_backend(device).target
    document = cs.CalibrationDocument.from_json(cs.from_target(f"ibm:{device}", target, datetime.now().astimezone())
                                                .to_json())
    qubits = (*best_qubits(target, 3), 0, 17)
    expected, got = ibm_noise(compact_target(target, qubits), qubits), document.noise(qubits)
    assert sorted(expected.gates) == sorted(got.gates) and "sx" in got.gates
    for name, channel in expected.gates.items():
        for part in ("transverse", "longitudinal", "offset"):
            np.testing.assert_allclose(getattr(got.gates[name], part), getattr(channel, part), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.p1_given_0, expected.p1_given_0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.p0_given_1, expected.p0_given_1, rtol=0, atol=1e-12)


def test_snapshot_lowers_to_the_gates_the_device_runs() -> None:
    """The document's compact Target gives the rz/sx/x sequence (angles as functions of the parameters) that the
    fake's own compact target gives, copy by copy on the same physical qubits."""
    document = torino_document()
    cs.install_resolver(lambda i: document.to_json() if i == "local-test" else None)
    model = make_model(width=[3, 2], reps=2, fast_measure=False)
    plan = FeedForwardPlan(model, make_inputs(4, 3))
    template = plan.next_batch(plan.initial_state()).template
    qubits = best_qubits(fake_backend(DEVICE).target, 3)
    ours, our_sites, _ = cs._programs("local-test", qubits, template)
    theirs, their_sites, _ = _fake_programs(DEVICE, qubits, template)
    by_qubit = {qubits[s]: p for p, s in zip(theirs, their_sites, strict=True)}
    assert [op.gate for op in ours[0]] and {op.gate for op in ours[0]} <= {"rz", "sx", "x"}
    for program, site in zip(ours, our_sites, strict=True):
        assert program == by_qubit[qubits[site]]


def test_unknown_snapshot_and_bad_qubits_are_input_errors() -> None:
    document = torino_document().to_json()
    document["qubits"][5]["operational"] = False
    cs.install_resolver(lambda i: document if i == "local-test-2" else None)
    with pytest.raises(InputError) as err:
        cs.resolve("nope")
    assert err.value.field == "backend"
    backend = cs.SnapshotEmulator("local-test-2")
    for qubits in ([133], [5], [1, 1]):
        with pytest.raises(InputError) as err:
            backend.validate(None, len(qubits), {"qubits": qubits})
        assert err.value.field == "options.qubits", qubits


def _calibrations(qc: Client, **params: object) -> dict:
    response = qc.http.get("/v1/calibrations", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_fake_torino_job_stores_its_snapshot_once_and_the_emulator_reproduces_it(service) -> None:  # type: ignore[no-untyped-def]
    qc, model_id = service
    x = make_inputs(6, 3, seed=1)
    jobs = [qc.submit(model_id, x, backend=f"ibm:{DEVICE}", shots=SHOTS, pack=1, options={"seed": seed},
                      mitigation="none") for seed in (7, 8)]
    finals = [qc.wait(job.id, timeout=300, progress=False) for job in jobs]
    for final in finals:
        assert final.state == JobState.SUCCEEDED, final.error
    placement = finals[0].placement
    assert placement is not None and placement["calibration_id"]
    assert finals[1].placement is not None and finals[1].placement["calibration_id"] == placement["calibration_id"]
    listed = _calibrations(qc, backend=f"ibm:{DEVICE}")
    assert listed["total"] == 1 and listed["items"][0]["id"] == placement["calibration_id"]
    assert listed["items"][0]["emulator"] == f"emulate:calibration:{placement['calibration_id']}"
    assert _calibrations(qc, backend="ibm:fake_nowhere")["total"] == 0
    detail = qc.http.get(f"/v1/calibrations/{placement['calibration_id']}").json()
    assert detail["document"]["backend"] == f"ibm:{DEVICE}" and len(detail["document"]["qubits"]) == 133
    assert datetime.fromisoformat(detail["document"]["calibrated_at"]) == datetime.fromisoformat(
        placement["calibration_time"])

    emulated = qc.submit(model_id, x, backend=f"emulate:calibration:{placement['calibration_id']}", shots=SHOTS,
                         pack=1, options={"seed": 11, "qubits": placement["qubits"]}, mitigation="none")
    final = qc.wait(emulated.id, timeout=120, progress=False)
    assert final.state == JobState.SUCCEEDED, final.error
    y_ibm, se_ibm = qc.result(jobs[0].id)
    y_emu, se_emu = qc.result(emulated.id)
    sigma = np.sqrt(se_ibm**2 + se_emu**2)
    z = np.abs(y_ibm - y_emu) / sigma
    print(f"emulate:calibration vs ibm:{DEVICE}: max |Δ|/σ = {z.max():.2f}, max |Δ| = "
          f"{np.abs(y_ibm - y_emu).max():.4f}, median σ = {np.median(sigma):.4f}")
    assert np.all(z <= 5), z
    assert _calibrations(qc)["total"] == 1  # the emulator stored nothing


def test_upload_checks_the_schema_and_stores_once(service) -> None:  # type: ignore[no-untyped-def]
    qc, model_id = service
    document = torino_document().to_json()
    document["backend"] = "ibm:uploaded"
    created = qc.http.post("/v1/calibrations", json={"document": document})
    assert created.status_code == 201, created.text
    again = qc.http.post("/v1/calibrations", json={"document": document})
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
    assert qc.http.get(f"/v1/calibrations/{created.json()['id']}").json()["document"] == document

    def broken(path: list, value: object) -> dict:
        bad = copy.deepcopy(document)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return bad

    cases = {
        "document.qubits[3].t1": broken(["qubits", 3, "t1"], -1.0),
        "document.qubits[0].p1_given_0": broken(["qubits", 0, "p1_given_0"], 1.5),
        "document.qubits[2].gates.sx.duration": broken(["qubits", 2, "gates", "sx", "duration"], "long"),
        "document.version": broken(["version"], 2),
        "document.calibrated_at": broken(["calibrated_at"], "2025-01-01T00:00:00"),
        "document.basis_gates": broken(["basis_gates"], ["rz", "cx"]),
        "document.qubits[1].spin": broken(["qubits", 1, "spin"], 1),
    }
    for field, bad in cases.items():
        response = qc.http.post("/v1/calibrations", json={"document": bad})
        assert response.status_code == 422, (field, response.text)
        assert response.json()["error"]["field"] == field, response.json()

    x = make_inputs(2, 3)
    with pytest.raises(ApiError) as err:
        qc.submit(model_id, x, backend="emulate:calibration:no-such-snapshot", mitigation="none")
    assert err.value.status == 422 and err.value.field == "backend"
    with pytest.raises(ApiError) as err:
        qc.submit(model_id, x, backend=f"emulate:calibration:{created.json()['id']}", pack=1,
                  options={"qubits": [500]}, mitigation="none")
    assert err.value.status == 422 and err.value.field == "options.qubits"
    assert qc.http.get("/v1/calibrations/no-such").status_code == 404
