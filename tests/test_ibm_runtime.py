"""ibm:<device> through Qiskit Runtime: local testing mode end to end, calibrated packing, refusals.

Noise bound used below (a single-layer model with ⟨Z⟩ read-out, so it stays
linear): a row run on qubit q reads p0 off by at most
ε_q = 2·e_ro(q) + 3·n_g·e_sx(q) — the read-out assignment error (an average of
the two flip probabilities, hence ×2) plus, per physical gate, three times the
reported gate error r: the device model is depolarizing + thermal relaxation,
incoherent channels whose half diamond distance from the identity is 1.5·r
(depolarizing) to 3·r (amplitude damping). Output o moves by at most
Σ_i |w_oi|·2·ε, and shot noise adds 5σ of the job's own standard error.
"""

import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_inputs, make_model
from qkan_orch.backends import get_backend, run_plan
from qkan_orch.backends.qiskit_common import isa_template
from qkan_orch.circuits import FeedForwardPlan
from qkan_orch.circuits.batch import ActivationBatch, Segment, Template
from qkan_orch.client import ApiError, Client, JobState
from qkan_orch.models import save_model
from qkan_orch.models.errors import InputError
from qkan_orch.models.network import qkan_layers
from qkan_orch.service.local import LocalService
from service_env import stack_env

SHOTS = 4000


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("ibm")
    with stack_env("system-redis+postgresql", tmp) as env:
        local = LocalService(tmp, env, concurrency=2)
        local.start(workers=1)
        try:
            with Client(local.url, local.create_key()) as qc:
                model = make_model(width=[3, 2], reps=2, fast_measure=False)
                save_model(model.float(), str(tmp / "m.safetensors"))
                yield qc, qc.upload_model(tmp / "m.safetensors").id, model
        finally:
            local.stop()


def noise_bound(model, placement: dict, template_gates: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Σ_i |w_oi|·2·ε over the worst qubit of the placement (see the module docstring)."""
    eps = max(2 * q["readout_error"] + 3 * template_gates * q["sx_error"] for q in placement["calibration"])
    weights = qkan_layers(model)[0].edge_weights().detach().abs().sum(dim=1).numpy()
    return weights * 2 * eps


@pytest.mark.parametrize("device", ["fake_sherbrooke", "fake_torino"])
def test_fake_devices_run_through_api_worker_and_runtime(service, device: str) -> None:  # type: ignore[no-untyped-def]
    qc, model_id, model = service
    x = make_inputs(6, 3, seed=1)
    exact = run_plan(FeedForwardPlan(model, x), get_backend("exact")).outputs
    job = qc.submit(model_id, x, backend=f"ibm:{device}", shots=SHOTS, pack=1, options={"seed": 7},
                    mitigation="none")  # the raw reading, bounded by the device's errors (module docstring)
    assert job.queue == "ibm" and job.estimate and job.estimate.executions == 6 * 3 * 2
    final = qc.wait(job.id, timeout=300, progress=False)
    assert final.state == JobState.SUCCEEDED, final.error
    assert len(final.provider_job_ids) == 1  # one Runtime job, one PUB for the round
    outputs, stderr = qc.result(job.id)
    placement = final.placement
    assert placement is not None
    assert placement["pack"] == 1 and len(placement["qubits"]) == 1 and placement["calibration_time"]
    backend = get_backend(f"ibm:{device}")
    isa = isa_template(FeedForwardPlan(model, x).next_batch(FeedForwardPlan(model, x).initial_state()).template,
                       1, backend._backend(1).target, key=(backend.name,), layout=tuple(placement["qubits"]))
    gates = sum(n for g, n in isa.count_ops().items() if g in ("sx", "x"))
    bound = 5 * stderr + noise_bound(model, placement, gates)
    assert np.all(np.abs(outputs - exact) <= bound), (np.abs(outputs - exact), bound)


def test_auto_packing_uses_calibrated_qubits_and_records_them(service) -> None:  # type: ignore[no-untyped-def]
    qc, model_id, model = service
    x = make_inputs(8, 3, seed=2)
    job = qc.submit(model_id, x, backend="ibm:fake_sherbrooke", shots=1000, pack="auto", options={"seed": 3},
                    mitigation="none")
    assert job.pack == "auto"
    final = qc.wait(job.id, timeout=300, progress=False)
    assert final.state == JobState.SUCCEEDED, final.error
    placement = final.placement
    assert placement is not None
    qubits = placement["qubits"]
    assert placement["pack"] == len(qubits) >= 20 and len(set(qubits)) == len(qubits)
    for q in placement["calibration"]:  # every chosen qubit passes the default thresholds
        assert q["operational"] and q["readout_error"] <= 0.03 and q["sx_error"] <= 1e-3 and q["t2_us"] >= 50
    assert final.executions == -(-48 // len(qubits))  # 48 rows on ⌈48/W⌉ circuits
    exact = run_plan(FeedForwardPlan(model, x), get_backend("exact")).outputs
    outputs, stderr = qc.result(job.id)
    assert np.all(np.abs(outputs - exact) <= 5 * stderr + noise_bound(model, placement, 8))


def near_basis_model() -> torch.nn.Module:
    """A [3, 2] QKAN (⟨Z⟩ read-out) whose edges end near |0⟩ or |1⟩ whatever x: RY(−π/2) turns H|0⟩ into |0⟩,
    the RZ(x) then only add phases, and the last RY(α) leaves p0 = cos²(α/2) ∈ {0.98, 0.02, 0.94, …}.

    Near a basis state shot noise is small (σ_⟨Z⟩ = 2·√(p0·p1/n) ≈ 0.001 at 10⁵ shots) while read-out error
    moves ⟨Z⟩ by about twice the qubit's flip probability: the setting where mitigation must show."""
    model = make_model(width=[3, 2], reps=2, fast_measure=False)
    theta = qkan_layers(model)[0].theta  # (O, I, reps + 1, 2): [RZ, RY] per block
    alpha = torch.tensor([[0.3, math.pi - 0.3, 0.5], [math.pi - 0.5, 0.4, math.pi - 0.4]], dtype=theta.dtype)
    with torch.no_grad():
        theta.zero_()
        theta[:, :, 0, 1] = -math.pi / 2
        theta[:, :, -1, 1] = alpha
    return model


def test_readout_and_zne_through_runtime_beat_the_raw_reading_and_record_each_qubits_matrix(service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """readout+zne with pack="auto" through API → worker → Runtime local testing: the calibration circuits and
    every scale factor are PUBs of the round's one Runtime job, each chosen qubit gets its own assignment
    matrix (on the job's placement and the round's event), and the mitigated outputs land closer to the exact
    ones than the same round's raw reading, whose error is read-out bias: its mean z² is over 25 (5σ)."""
    qc, _, _ = service
    model = near_basis_model()
    save_model(model.float(), str(tmp_path / "near.safetensors"))
    model_id = qc.upload_model(tmp_path / "near.safetensors").id
    x = make_inputs(1, 3, seed=4)  # 6 rows: 6 copies, so local testing runs Aer's density-matrix method
    shots = 100_000  # the fake devices' limit: shot noise far below the read-out bias
    job = qc.submit(model_id, x, backend="ibm:fake_sherbrooke", shots=shots, pack="auto", options={"seed": 5},
                    mitigation={"method": "readout+zne", "calibration_shots": shots})
    final = qc.wait(job.id, timeout=600, progress=False)
    assert final.state == JobState.SUCCEEDED, final.error
    assert len(final.provider_job_ids) == 1  # data at scales 1, 3, 5 and the calibration: one Runtime job
    placement = final.placement
    assert placement is not None and placement["pack"] == 6
    assert final.executions == 3 + 2  # 6 rows at three scales on one circuit each, |0⟩ and |1⟩ once each
    matrices = placement["readout"]
    assert [m["qubit"] for m in matrices] == placement["qubits"] and all(m["shots"] == shots for m in matrices)
    for m, q in zip(matrices, placement["calibration"], strict=True):  # each qubit's own flips, near its own
        flips = (m["matrix"][1][0] + m["matrix"][0][1]) / 2  # calibration: 5σ of the calibration shots, plus
        assert abs(flips - q["readout_error"]) <= 5 * math.sqrt(q["readout_error"] / shots) + 0.01  # 1% slack
    event = next(d for e, d in qc.events(job.id) if e == "round")
    assert event["mitigation"]["readout"] == matrices
    exact = run_plan(FeedForwardPlan(model, x), get_backend("exact")).outputs
    body = qc.job_result(job.id)
    raw_error = np.abs(np.asarray(body.raw_outputs) - exact)
    assert np.mean((raw_error / np.asarray(body.raw_stderr)) ** 2) > 25, (raw_error, body.raw_stderr)  # a bias
    rmse = float(np.sqrt(np.mean((np.asarray(body.outputs) - exact) ** 2)))
    assert rmse <= float(np.sqrt(np.mean(raw_error**2))), (rmse, raw_error)


def test_refusals_happen_before_any_submission(service) -> None:  # type: ignore[no-untyped-def]
    qc, model_id, _ = service
    x = make_inputs(2, 3)
    cases = [
        (dict(backend="ibm:fake_nowhere"), "backend"),
        (dict(backend="ibm:fake_sherbrooke", shots=100_001), "shots"),
        (dict(backend="ibm:fake_sherbrooke", shots=100, pack=128), "pack"),
        (dict(backend="ibm:fake_sherbrooke", shots=100, options={"max_readout_error": -1}),
         "options.max_readout_error"),
        (dict(backend="ibm:fake_sherbrooke", shots=100, pack="auto", options={"max_readout_error": 0.0}), "pack"),
        (dict(backend="ibm:fake_sherbrooke", shots=100, options={"shots_per_qubit": 3}), "options.shots_per_qubit"),
        (dict(backend="ibm:fake_sherbrooke", shots=100, options={"dynamical_decoupling": "XYZ"}),
         "options.dynamical_decoupling"),
        (dict(backend="ibm:fake_sherbrooke", shots=100, options={"twirling": "yes"}), "options.twirling"),
    ]
    cases.append((dict(backend="braket:arn:aws:braket:eu-north-1::device/iqm/Garnet", shots=100), "backend"))
    before = qc.jobs().total
    for kwargs, field in cases:
        with pytest.raises(ApiError) as err:
            qc.submit(model_id, x, **kwargs)
        assert err.value.status == 422 and err.value.field == field, (kwargs, err.value)
    # a well-formed ARN without a Braket account: the setting that enables it, before AWS is asked; not a job
    with pytest.raises(ApiError) as err:
        qc.submit(model_id, x, backend="braket:arn:aws:braket:eu-north-1::device/qpu/iqm/Garnet", shots=100)
    assert err.value.status == 422 and err.value.field == "QKAN_BRAKET_S3_BUCKET", err.value
    assert qc.jobs().total == before


def test_real_ibm_device_without_an_account_is_refused_with_how_to(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    from qkan_orch.backends.accounts import accounts
    from qkan_orch.backends.ibm_account import runtime_service

    monkeypatch.setenv("HOME", str(tmp_path))  # no saved Qiskit account
    monkeypatch.delenv("QKAN_IBM_TOKEN", raising=False)
    monkeypatch.delenv("QISKIT_IBM_TOKEN", raising=False)
    accounts.cache_clear()
    runtime_service.cache_clear()
    with pytest.raises(InputError) as err:
        get_backend("ibm:ibm_brisbane").capabilities()
    assert err.value.field == "backend" and "QKAN_IBM_TOKEN" in err.value.message


def test_packed_runtime_rows_keep_their_order() -> None:
    """Deterministic rows (p0 ∈ {0, 1}) packed 5 wide on the noisy device: a row on the wrong qubit would
    read the opposite bit, while the device errors on the chosen qubits stay below a few percent."""
    pattern = [1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1]
    params = np.array([[-math.pi / 2, 0.3 * k, math.pi * bit] for k, bit in enumerate(pattern)])
    batch = ActivationBatch(Template("rpz_encoding", 1), params, (Segment("bits", np.arange(11).reshape(-1, 1, 1)),),
                            "z")
    backend = get_backend("ibm:fake_sherbrooke")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = backend.submit(batch, shots=200, pack=5, options={"seed": 1})
        assert handle.result is None and len(handle.provider_job_ids) == 1  # submit returned at once
        while (result := backend.poll(handle)) is None:
            time.sleep(0.05)
    assert result.executions == 3
    assert np.round(result.p0).tolist() == [1.0 - bit for bit in pattern]


def test_backends_list_price_calibration_and_jobs_waiting_on_the_provider(service) -> None:  # type: ignore[no-untyped-def]
    qc, model_id, _ = service
    job = qc.submit(model_id, make_inputs(8, 3, seed=4), backend="ibm:fake_sherbrooke", shots=4000, pack="auto")
    deadline = time.monotonic() + 120
    while qc.status(job.id).state != JobState.WAITING_ON_PROVIDER:
        assert time.monotonic() < deadline, "the job never reached its provider"
        time.sleep(0.05)
    listed = {b.name: b for b in qc.backends()}
    entry = listed["ibm:fake_sherbrooke"]
    assert entry.queue == "ibm" and entry.qubits == 127 and entry.online
    assert entry.pending_jobs >= 1  # this job, in the provider's hands (it may finish right after)
    assert (entry.calibration_time or "").startswith("20") and (entry.calibration_age_hours or 0) > 0
    assert entry.price["source"].startswith("free") and listed["exact"].pending_jobs == 0
    assert qc.wait(job.id, timeout=300, progress=False).state == JobState.SUCCEEDED


class _RemoteJob:
    """A Runtime job as the service returns it by id: real results from a local-testing run, scripted states."""

    def __init__(self, states: list[str], done: object | None = None, seconds: float = 0.0) -> None:
        self.states, self.done, self.seconds, self.cancelled = states, done, seconds, False

    def status(self) -> str:
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def result(self):  # type: ignore[no-untyped-def]
        return self.done.result()  # type: ignore[union-attr]

    def metrics(self) -> dict:
        return {"usage": {"quantum_seconds": self.seconds}}

    def error_message(self) -> str:
        return "Error 1234: circuit too long"

    def cancel(self) -> None:
        self.cancelled = True


def test_remote_job_states_map_to_pending_results_and_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The code path of a real account's jobs (IBM cannot be reached here): status → poll, metrics → seconds."""
    import qkan_orch.backends.ibm as ibm
    pattern = [1, 0, 0, 1, 1, 0]
    params = np.array([[-math.pi / 2, 0.3 * k, math.pi * bit] for k, bit in enumerate(pattern)])
    batch = ActivationBatch(Template("rpz_encoding", 1), params, (Segment("bits", np.arange(6).reshape(-1, 1, 1)),),
                            "z")
    captured: list = []
    spool = ibm.spool_when_done
    monkeypatch.setattr(ibm, "spool_when_done", lambda job, width: (captured.append(job), spool(job, width)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = get_backend("ibm:fake_sherbrooke").submit(batch, shots=100, pack=3, options={"seed": 1})
    job_id = handle.provider_job_ids[0]
    done = _RemoteJob(["QUEUED", "RUNNING", "DONE"], done=captured[0], seconds=3.5)  # a real PrimitiveResult
    jobs = {job_id: done, "bad": _RemoteJob(["ERROR"])}
    monkeypatch.setattr(ibm, "runtime_service", lambda: type("S", (), {"job": lambda _, i: jobs[i]})())
    remote = ibm.IBMBackend("ibm_sherbrooke_offline")
    assert remote.poll(handle) is None and remote.poll(handle) is None  # queued, running: never waits
    result = remote.poll(handle)
    assert result is not None and np.round(result.p0).tolist() == [1.0 - b for b in pattern]
    assert result.qpu_seconds == 3.5 and result.cost == pytest.approx(3.5 * 1.6)
    failed = type(handle)(remote.name, ["bad"], dict(handle.data))
    with pytest.raises(ibm.ProviderJobFailed, match="ERROR: Error 1234"):
        remote.poll(failed)
    remote.cancel(failed)
    assert jobs["bad"].cancelled



def test_a_batch_is_split_into_jobs_only_at_the_per_job_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import qkan_orch.backends.ibm as ibm
    # at 100 000 shots the 10⁷ rows × shots of a job allow 100 rows: 250 rows are 3 jobs
    assert ibm.IBMBackend("fake_sherbrooke").estimate([250], 100_000, 1).tasks == 3
    monkeypatch.setattr(ibm, "ROWS_PER_JOB", 4)  # IBM's real limit is 10 000 rows; 11 rows then need 3 jobs
    pattern = [1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1]
    params = np.array([[-math.pi / 2, 0.3 * k, math.pi * bit] for k, bit in enumerate(pattern)])
    batch = ActivationBatch(Template("rpz_encoding", 1), params, (Segment("bits", np.arange(11).reshape(-1, 1, 1)),),
                            "z")
    backend = get_backend("ibm:fake_sherbrooke")
    assert backend.estimate([11], 100, 1).tasks == 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = backend.submit(batch, shots=100, pack=1, options={"seed": 2})
        while (result := backend.poll(handle)) is None:
            time.sleep(0.05)
    assert len(handle.provider_job_ids) == 3 and handle.data["chunks"] == [4, 4, 3]
    assert np.round(result.p0).tolist() == [1.0 - bit for bit in pattern]  # rows back in order across jobs


def test_runtime_native_options_reach_the_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    """Twirling and dynamical decoupling go to Runtime's executor Sampler, which applies them before
    submission — in local testing mode too — with no deprecation warning on the way; twirled runs keep
    exactly the shots asked for."""
    import qkan_orch.backends.ibm as ibm

    seen: list = []

    class Recording(ibm.Sampler):
        def run(self, pubs, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(self.finalize_options())
            return super().run(pubs, **kwargs)

    monkeypatch.setattr(ibm, "Sampler", Recording)
    pattern = [1, 0, 1]
    params = np.array([[-math.pi / 2, 0.0, math.pi * bit] for bit in pattern])
    batch = ActivationBatch(Template("rpz_encoding", 1), params, (Segment("bits", np.arange(3).reshape(-1, 1, 1)),),
                            "z")
    backend = get_backend("ibm:fake_sherbrooke")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", PendingDeprecationWarning)
        handle = backend.submit(batch, shots=300, pack=1,
                                options={"seed": 4, "twirling": True, "dynamical_decoupling": "XY4"})
        while (result := backend.poll(handle)) is None:
            time.sleep(0.05)
    (options,) = seen
    assert options.twirling.enable_gates is False and options.twirling.enable_measure is True
    assert (options.twirling.num_randomizations, options.twirling.shots_per_randomization) == (4, 75)
    assert options.dynamical_decoupling.enable and options.dynamical_decoupling.sequence_type == "XY4"
    assert options.simulator.seed_simulator == 4
    assert result.shots == 300 and np.all((result.p0 >= 0) & (result.p0 <= 1))
    assert np.round(result.p0).tolist() == [1.0 - bit for bit in pattern]
    assert [ibm._randomizations(n) for n in (50, 200, 1000, 4000, 4001, 100_000)] == [1, 2, 10, 32, 1, 32]


def test_local_testing_noise_on_the_qubits_in_use_is_the_fake_devices_own() -> None:
    """Restricting the fake's model to the qubits a circuit uses changes nothing: same seed, same counts."""
    from qiskit_ibm_runtime.fake_provider import FakeSherbrooke

    from qkan_orch.backends.ibm_local_testing import used_qubit_noise

    fake = FakeSherbrooke()
    fake.set_options(method="density_matrix")
    qubits = (44, 101)
    batch = ActivationBatch(Template("pz_encoding", 2), np.random.default_rng(0).uniform(-2, 2, (12, 8)),
                            (Segment("x", np.arange(12).reshape(-1, 1, 1)),), "z")
    isa = isa_template(batch.template, 2, fake.target, key=("test",), layout=qubits)
    circuits = [isa.assign_parameters(row) for row in batch.params.reshape(6, 16)]
    full = fake.run(circuits, shots=2000, seed_simulator=5).result()
    used = fake.run(circuits, shots=2000, seed_simulator=5, noise_model=used_qubit_noise("fake_sherbrooke", qubits))
    assert [full.get_counts(i) for i in range(6)] == [used.result().get_counts(i) for i in range(6)]
