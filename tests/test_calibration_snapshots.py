"""Calibration snapshots (issue 14 item 2): stored once per (backend, calibration time) when a job is placed on
``ibm:fake_torino``, listed and read at /v1/calibrations, uploaded with a schema check, and run as
``emulate:calibration:<id>``, which reproduces the hardware job.

Agreement bound: the hardware job and the emulator job each report a standard error per output (shot noise,
delta method); they run the same edge circuits on the same qubit with the same noise model, so their outputs
differ by shot noise only: |y_ibm − y_emu| ≤ 5·σ with σ = √(se_ibm² + se_emu²), per output.
"""

import copy
import math
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from conftest import make_inputs, make_model
from qkan_orch.backends import calibration_snapshot as cs
from qkan_orch.backends import snapshot_emulator
from qkan_orch.backends.emulator import _fake_programs
from qkan_orch.backends.emulator_noise import ibm_noise
from qkan_orch.backends.qiskit_common import best_qubits, compact_target, fake_backend
from qkan_orch.circuits import FeedForwardPlan
from qkan_orch.client import ApiError, Client, JobState
from qkan_orch.models import save_model
from qkan_orch.models.errors import InputError

SHOTS = 4000
DEVICE = "fake_torino"


pytestmark = pytest.mark.service(concurrency=2)


@pytest.fixture(scope="module")
def model_id(qc: Client, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_model(make_model(width=[3, 2], reps=2, fast_measure=False).float(), str(path))
    return qc.upload_model(path).id


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
    ours, our_sites, _ = snapshot_emulator._programs("local-test", qubits, template)
    theirs, their_sites, _ = _fake_programs(DEVICE, qubits, template)
    by_qubit = {qubits[s]: p for p, s in zip(theirs, their_sites, strict=True)}
    assert [op.gate for op in ours[0]] and {op.gate for op in ours[0]} <= {"rz", "sx", "x"}
    for program, site in zip(ours, our_sites, strict=True):
        assert program == by_qubit[qubits[site]]


def test_snapshot_reproduces_ibm_fake_per_row_at_1e5_shots() -> None:
    """Row by row, ibm:fake_torino's p0 at 10⁵ shots against the snapshot's exact noisy p0 on the same qubit:
    mean z² over the 36 rows within 5 sd of a χ²₃₆/36 (≤ 1 + 5·√(2/36) ≈ 2.18); measured 0.69. The device's own
    read-out probabilities matter: emulate:fake_torino (the Target's one read-out error) reads 4.1 there."""
    from qkan_orch.backends import get_backend

    fake = fake_backend(DEVICE)
    document = cs.from_target(f"ibm:{DEVICE}", fake.target, fake.properties().last_update_date, fake.properties())
    cs.install_resolver(lambda i: document.to_json() if i == "local-rows" else None)
    plan = FeedForwardPlan(make_model(width=[3, 2], reps=2, fast_measure=False), make_inputs(6, 3, seed=1))
    batch = plan.next_batch(plan.initial_state())
    ibm = get_backend(f"ibm:{DEVICE}")
    handle = ibm.submit(batch, shots=100_000, pack=1, options={"seed": 3})
    deadline = time.monotonic() + 120
    while (hardware := ibm.poll(handle)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert hardware is not None
    emulated = snapshot_emulator.SnapshotEmulator("local-rows").submit(
        batch, pack=1, options={"qubits": handle.data["placement"]["qubits"]}).result
    assert emulated is not None
    z = (hardware.p0 - emulated.p0) / hardware.p0_stderr
    assert np.mean(z**2) <= 1 + 5 * math.sqrt(2 / z.size), z


def test_unknown_snapshot_and_bad_qubits_are_input_errors() -> None:
    document = torino_document().to_json()
    document["qubits"][5]["operational"] = False
    cs.install_resolver(lambda i: document if i == "local-test-2" else None)
    with pytest.raises(InputError) as err:
        cs.resolve("nope")
    assert err.value.field == "backend"
    backend = snapshot_emulator.SnapshotEmulator("local-test-2")
    for qubits in ([133], [5], [1, 1]):
        with pytest.raises(InputError) as err:
            backend.validate(None, len(qubits), {"qubits": qubits})
        assert err.value.field == "options.qubits", qubits


def test_braket_calibration_becomes_a_document_and_runs_the_templates_gates() -> None:
    """An IQM-style standardized calibration (tests/test_braket_aws.py's): T1, T2, read-out and RB error per
    qubit, the graph's unlisted qubit not operational; the emulator runs the template's own gates (the device
    runs its OpenQASM), each depolarized by the RB error, and without noise gives the exact p0."""
    from braket.device_schema.iqm import IqmDeviceCapabilities
    from test_braket_aws import ARN, RB_ERROR, READOUT_ERROR, T2_US, capabilities

    from qkan_orch.backends.exact import exact_p0

    props = IqmDeviceCapabilities.parse_raw(capabilities(calibrated=True))
    document = cs.from_braket(f"braket:{ARN}", props)
    assert document is not None and len(document.qubits) == 20 and not document.qubit(19).operational
    q2, q7 = document.qubit(2), document.qubit(7)
    assert q2.t1 == pytest.approx(1e-4) and q2.t2 == pytest.approx(T2_US[2] * 1e-6) and q7.t2 == pytest.approx(95e-6)
    assert q2.p1_given_0 == q2.p0_given_1 == pytest.approx(READOUT_ERROR[2])
    assert q2.gates["ry"].error == pytest.approx(RB_ERROR[2]) and q2.gates["ry"].duration is None
    cs.install_resolver(lambda i: document.to_json() if i == "local-braket" else None)
    backend = snapshot_emulator.SnapshotEmulator("local-braket")
    model = make_model(width=[3, 2], reps=2, fast_measure=False)
    plan = FeedForwardPlan(model, make_inputs(4, 3))
    batch = plan.next_batch(plan.initial_state())
    ideal = backend.submit(batch, pack=2, options={"noise": False, "qubits": [2, 7]}).result
    assert ideal is not None
    np.testing.assert_allclose(ideal.p0, exact_p0(batch), rtol=0, atol=1e-12)
    noisy = backend.submit(batch, pack=2, options={"qubits": [2, 7]}).result
    assert noisy is not None and 0 < np.abs(noisy.p0 - ideal.p0).max() < 0.2


def test_storing_is_idempotent_on_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same (backend, calibration time) — also written in another time zone — is one row; another time is
    another row (PostgreSQL: the service tests above)."""
    from datetime import timedelta

    from qkan_orch.service.store import calibrations
    from qkan_orch.service.store.database import session_scope, upgrade

    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    document = torino_document()
    shifted = cs.CalibrationDocument(document.backend, document.calibrated_at.astimezone(UTC),
                                     document.basis_gates, document.qubits, document.dt)
    later = cs.CalibrationDocument(document.backend, document.calibrated_at + timedelta(hours=1),
                                   document.basis_gates, document.qubits, document.dt)
    with session_scope(url) as session:
        first, created = calibrations.store(session, document)
    with session_scope(url) as session:
        assert calibrations.store(session, shifted) == (first, False)
        assert calibrations.store(session, later)[1]
        assert calibrations.page(session, document.backend, 10, 0)[0] == 2
    assert cs.CalibrationDocument.from_json(calibrations.resolver(url)(first)) == document
    assert created and calibrations.resolver(url)("missing") is None


def _calibrations(qc: Client, **params: object) -> dict:
    response = qc.http.get("/v1/calibrations", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_fake_torino_job_stores_its_snapshot_once_and_the_emulator_reproduces_it(qc: Client, model_id: str) -> None:
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
    exact = qc.submit(model_id, x, backend=f"emulate:calibration:{placement['calibration_id']}", pack=1,
                      options={"qubits": placement["qubits"]}, mitigation="none")  # no shots: exact noisy p0
    assert qc.wait(exact.id, timeout=120, progress=False).state == JobState.SUCCEEDED
    y_exact, se_exact = qc.result(exact.id)
    assert not se_exact.any()
    z_exact = np.abs(y_ibm - y_exact) / se_ibm
    print(f"exact emulate:calibration vs ibm:{DEVICE}: max |Δ|/σ_ibm = {z_exact.max():.2f}, "
          f"mean z² = {np.mean(z_exact**2):.2f} over {z_exact.size} outputs")
    assert np.all(z_exact <= 5), z_exact
    assert _calibrations(qc)["total"] == 1  # the emulator stored nothing


def test_upload_checks_the_schema_and_stores_once(qc: Client, model_id: str) -> None:
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
