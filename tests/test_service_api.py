"""The REST service end to end: real HTTP, real Redis, real Celery worker processes, real SQL.

Runs once per stack: system Redis + PostgreSQL, system Redis + SQLite, and
the embedded Redis + SQLite a fresh machine uses.
"""

import json
import os
import pickle
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import qkan
import torch
from sqlalchemy import event, func, select

from conftest import make_inputs, make_model
from qkan_orch.client import ApiError, Client, Job, JobState
from qkan_orch.models import save_model
from qkan_orch.service.local import LocalService
from qkan_orch.service.store.database import engine_for, session_scope
from qkan_orch.service.store.keys import find_key
from qkan_orch.service.store.tables import Job as JobRow
from qkan_orch.service.store.tables import JobEvent, Round, StoredModel
from service_env import STACKS, stack_env

pytestmark = pytest.mark.usefixtures("plugin_backends")


@pytest.fixture(scope="module", params=list(STACKS))
def svc(request, tmp_path_factory) -> LocalService:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp(request.param)
    with stack_env(request.param, tmp) as env, LocalService(tmp, env, concurrency=2) as service:
        yield service


@pytest.fixture(scope="module")
def qc(svc: LocalService) -> Client:
    with Client(svc.url, svc.create_key("main")) as client:
        yield client


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    model = make_model(width=[2, 3, 2, 1], reps=2, preact_trainable=True).float()
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_model(model, str(path))
    return path, model


@pytest.fixture(scope="module")
def model_id(qc: Client, model_file) -> str:  # type: ignore[no-untyped-def]
    return qc.upload_model(model_file[0], name="three-layer").id


def counts(svc: LocalService) -> tuple[int, int, int]:
    with session_scope(svc.settings.resolved_database_url) as session:
        return tuple(session.scalar(select(func.count()).select_from(t)) for t in (StoredModel, JobRow, JobEvent))


def run(qc: Client, model: str, inputs, **kwargs) -> Job:  # type: ignore[no-untyped-def]
    job = qc.submit(model, inputs, **kwargs)
    return qc.wait(job.id, timeout=120, progress=False)


def test_inference_through_the_service_matches_the_model(qc: Client, model_id: str, model_file) -> None:
    _, model = model_file
    x = make_inputs(16, 2)
    status = run(qc, model_id, x)
    assert status.state == JobState.SUCCEEDED, status.error
    assert status.rounds_done == status.rounds_total == 3
    assert [r.number for r in status.rounds] == [0, 1, 2]
    assert status.started_at and status.finished_at and status.run_seconds >= 0
    assert status.created_at <= status.started_at <= status.finished_at  # timezone-aware on every store
    outputs, stderr, layers = qc.result(status.id, layers=True)
    with torch.no_grad():
        want = model(torch.from_numpy(x).float()).numpy()
    assert np.max(np.abs(outputs - want)) < 1e-5 and not stderr.any()
    assert [layer.shape for layer in layers] == [(16, 3), (16, 2), (16, 1)]


def test_mitigation_is_stored_shown_and_returned_raw_beside_mitigated(qc: Client, model_id: str) -> None:
    """The default on a noisy simulator is read-out correction, on an ideal one and exact none; a mitigated
    job's estimate counts its calibration circuits and scale factors, and its result has both outputs."""
    x = make_inputs(3, 2, seed=5)
    noisy = qc.submit(model_id, x, backend="braket:local_dm", shots=200)
    assert noisy.mitigation == {"method": "readout", "calibration_shots": 10_000}
    assert run(qc, model_id, x, backend="aer", shots=50).mitigation == {"method": "none"}
    plain = qc.submit(model_id, x, backend="braket:local_dm", shots=200, mitigation="none")
    both = qc.submit(model_id, x, backend="braket:local_dm", shots=200,
                     mitigation={"method": "readout+zne", "calibration_shots": 400, "scale_factors": [1, 3]})
    assert both.mitigation == {"method": "readout+zne", "calibration_shots": 400, "scale_factors": [1, 3],
                               "extrapolation": "linear"}
    assert plain.estimate and both.estimate
    # per round: 2 scale factors × the rows, and ⌈400/200⌉ = 2 circuits for each of |0⟩ and |1⟩ (pack 1)
    assert both.estimate.executions == 2 * plain.estimate.executions + 4 * plain.rounds_total
    final = qc.wait(both.id, timeout=120, progress=False)
    assert final.state == JobState.SUCCEEDED, final.error
    assert final.mitigation == both.mitigation and qc.status(both.id).mitigation == both.mitigation
    assert final.shots_used == final.estimate.shots  # type: ignore[union-attr]
    body = qc.job_result(both.id)
    assert body.raw_outputs is not None and np.shape(body.raw_outputs) == np.shape(body.outputs)
    assert not np.allclose(body.raw_outputs, body.outputs)
    rounds = [data for event, data in qc.events(both.id) if event == "round"]
    assert all(len(r["mitigation"]["readout"]) == 1 for r in rounds)  # one copy, one matrix a round
    assert qc.wait(plain.id, timeout=120, progress=False).state == JobState.SUCCEEDED
    assert qc.job_result(plain.id).raw_outputs is None
    assert qc.wait(noisy.id, timeout=120, progress=False).state == JobState.SUCCEEDED


def test_sampling_backend_reports_shots_and_errors(qc: Client, model_id: str) -> None:
    status = run(qc, model_id, make_inputs(8, 2), backend="aer", shots=2000, pack=4, options={"seed": 5})
    assert status.state == JobState.SUCCEEDED, status.error
    rows = sum(r.rows for r in status.rounds)
    assert status.executions == sum(-(-r.rows // 4) for r in status.rounds) and rows > 0
    assert status.shots_used == 2000 * status.executions
    _, stderr = qc.result(status.id)
    assert (stderr > 0).all()


def test_inputs_upload_as_npy_and_csv(qc: Client, model_id: str, tmp_path: Path) -> None:
    x = make_inputs(5, 2)
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", header="a,b", comments="")
    results = []
    for path in (tmp_path / "x.npy", tmp_path / "x.csv"):
        status = run(qc, model_id, path)
        assert status.state == JobState.SUCCEEDED and status.samples == 5
        results.append(qc.result(status.id)[0])
    assert np.allclose(results[0], results[1], atol=1e-12)


def test_qkan_state_dict_upload(qc: Client, tmp_path: Path) -> None:
    kwargs = {"width": [2, 4, 1], "reps": 2, "seed": 3, "preact_trainable": True}
    ref = qkan.QKAN(**kwargs)
    torch.save(ref.state_dict(), tmp_path / "m.pt")
    (tmp_path / "kwargs.json").write_text(json.dumps(kwargs))
    stored = qc.upload_model(tmp_path / "m.pt", tmp_path / "kwargs.json")
    assert stored.parameter_count == ref.param_size and len(stored.content_hash) == 64
    x = make_inputs(6, 2)
    status = run(qc, stored.id, x)
    with torch.no_grad():
        ref.eval()
        want = ref(torch.from_numpy(x).float()).numpy()
    assert np.max(np.abs(qc.result(status.id)[0] - want)) <= 1e-5


def test_idempotency_key_returns_the_same_job(svc: LocalService, qc: Client, model_id: str) -> None:
    x = make_inputs(3, 2)
    first = qc.submit(model_id, x, idempotency_key="once")
    before = counts(svc)
    again = qc.http.post("/v1/jobs", json={"model_id": model_id, "inputs": x.tolist(), "idempotency_key": "once"})
    assert again.status_code == 200 and again.json()["id"] == first.id
    other = qc.http.post("/v1/jobs", json={"model_id": model_id, "inputs": (x + 1).tolist(),
                                           "idempotency_key": "once"})
    assert other.status_code == 409 and other.json()["error"]["field"] == "idempotency_key"
    assert counts(svc)[:2] == before[:2]


def test_events_stream_progress_until_the_end(qc: Client, model_id: str) -> None:
    job = qc.submit(model_id, make_inputs(4, 2), backend="test:counting",
                    options={"delay": 0.2, "log": os.devnull})
    events = list(qc.events(job.id))
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "state" and events[0][1]["state"] == "queued"
    assert [data["round"] for kind, data in events if kind == "round"] == [1, 2, 3]
    assert events[-1] == ("state", {**events[-1][1], "state": "succeeded"})


def test_cancel_reaches_the_provider(qc: Client, model_id: str, tmp_path: Path) -> None:
    log = tmp_path / "pending.log"
    job = qc.submit(model_id, make_inputs(4, 2), backend="test:pending",
                    options={"pending_polls": 10_000, "log": str(log)})
    deadline = time.monotonic() + 60
    while qc.status(job.id).state != JobState.WAITING_ON_PROVIDER:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert qc.status(job.id).provider_job_ids[0].startswith("pending-")
    qc.cancel(job.id)
    final = qc.wait(job.id, timeout=60, progress=False)
    assert final.state == JobState.CANCELLED
    assert Path(str(log) + ".cancelled").read_text().split() == final.provider_job_ids
    with pytest.raises(ApiError) as err:
        qc.result(job.id)
    assert err.value.status == 409
    done = run(qc, model_id, make_inputs(2, 2))
    with pytest.raises(ApiError) as err:
        qc.cancel(done.id)
    assert err.value.status == 409 and err.value.code == "already_finished"


def test_transient_errors_retry_then_succeed_or_fail_with_the_reason(qc: Client, model_id: str, tmp_path: Path):
    ok = run(qc, model_id, make_inputs(2, 2), backend="test:flaky",
             options={"failures": 2, "log": str(tmp_path / "a.log")})
    assert ok.state == JobState.SUCCEEDED
    assert len((tmp_path / "a.log").read_text().splitlines()) == 2 + 3  # two refusals, then three rounds
    bad = run(qc, model_id, make_inputs(2, 2), backend="test:flaky",
              options={"failures": 100, "log": str(tmp_path / "b.log")})
    assert bad.state == JobState.FAILED and bad.error and bad.error.code == "provider_error"
    assert "provider busy" in bad.error.message


def test_training_runs_as_a_job_and_yields_a_usable_model(qc: Client) -> None:
    job = qc.train({"width": [1, 2, 1], "reps": 2}, function="sin", steps=5, optimizer="lbfgs", name="sine")
    assert job.kind == "train" and job.state == JobState.QUEUED
    status = qc.wait(job.id, timeout=120, progress=False)
    assert status.state == JobState.SUCCEEDED, status.error
    body = qc.job_result(job.id)
    assert body.model_id and body.losses and len(body.losses) == 5 and body.losses[-1] < body.losses[0]
    assert body.outputs is None and qc.model(body.model_id).name == "sine"
    assert run(qc, body.model_id, [[0.5]]).state == JobState.SUCCEEDED


def test_training_from_an_uploaded_csv(qc: Client, tmp_path: Path) -> None:
    x = make_inputs(64, 2, seed=9)
    np.savetxt(tmp_path / "d.csv", np.hstack([x, 0.5 * x[:, :1] * x[:, 1:]]), delimiter=",")
    job = qc.train({"width": [2, 2, 1], "reps": 2}, csv=tmp_path / "d.csv", steps=3, name="from-csv")
    assert qc.wait(job.id, timeout=120, progress=False).state == JobState.SUCCEEDED
    assert qc.model(qc.job_result(job.id).model_id).spec["width"] == [2, 2, 1]  # type: ignore[arg-type]
    with pytest.raises(ApiError) as err:  # four columns cannot be 2 inputs + 1 target
        np.savetxt(tmp_path / "bad.csv", np.hstack([x, x]), delimiter=",")
        qc.train({"width": [2, 2, 1]}, csv=tmp_path / "bad.csv")
    assert err.value.status == 422 and err.value.field == "csv"
    with pytest.raises(ApiError) as err:
        qc.train({"width": [2, 2, 1]}, function="sin_cos", csv=tmp_path / "d.csv")
    assert err.value.field == "function"


def test_listing_filters_and_pages(qc: Client, model_id: str) -> None:
    page = qc.jobs(model_id=model_id, state="succeeded", limit=2)
    assert page.total >= 3 and len(page.items) == 2 and (page.limit, page.offset) == (2, 0)
    assert all(j.state == JobState.SUCCEEDED and j.model_id == model_id for j in page.items)
    second = qc.jobs(model_id=model_id, state="succeeded", limit=2, offset=2)
    assert {j.id for j in page.items}.isdisjoint(j.id for j in second.items)
    models = qc.models()
    assert models.total >= 1 and {m.source for m in models.items} <= {"upload", "train"}


def test_backends_queues_health_and_metrics(svc: LocalService, qc: Client) -> None:
    names = {b.name: b for b in qc.backends()}
    assert {"exact", "aer", "aer:fake_sherbrooke", "braket:local", "pennylane:default.qubit"} <= set(names)
    assert names["aer:fake_sherbrooke"].queue == "local" and names["aer"].online
    queues = qc.queues()
    assert {q.name for q in queues.queues} == {"local", "ibm", "braket"}
    assert len(queues.workers) == 1 and queues.workers[0].queues == ["local", "ibm", "braket"]
    assert queues.jobs_by_state["succeeded"] >= 1 and queues.finished_last_minute >= 1
    assert httpx.get(f"{svc.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{svc.url}/readyz").json() == {"database": "ok", "broker": "ok"}
    metrics = httpx.get(f"{svc.url}/metrics").text
    assert 'qkan_jobs{state="succeeded"}' in metrics and "qkan_round_latency_seconds_bucket" in metrics
    assert 'qkan_queue_depth{queue="local"}' in metrics and "qkan_shots_total" in metrics


def test_keys_see_only_their_own_models_and_jobs(svc: LocalService, qc: Client, model_id: str) -> None:
    job = run(qc, model_id, make_inputs(2, 2))
    url = svc.url
    assert httpx.get(f"{url}/v1/models").status_code == 401
    wrong = httpx.get(f"{url}/v1/jobs", headers={"Authorization": "Bearer qk_not-a-real-key"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    with Client(url, svc.create_key("other")) as other:
        for call in (lambda: other.model(model_id), lambda: other.status(job.id),
                     lambda: other.result(job.id), lambda: other.cancel(job.id),
                     lambda: other.submit(model_id, [[0.1, 0.2]])):
            with pytest.raises(ApiError) as err:
                call()
            assert err.value.status == 404
        assert other.jobs().total == 0 and other.models().total == 0


class _Evil:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


BAD_JOBS = [
    ("malformed JSON", b'{"model_id": "x", "inputs": [[1, 2]', "application/json", 400, None),
    ("not an object", b"[1, 2, 3]", "application/json", 422, "body"),
    ("wrong width", {"inputs": [[0.1, 0.2, 0.3]]}, None, 422, "inputs"),
    ("ragged rows", {"inputs": [[0.1, 0.2], [0.3]]}, None, 422, "inputs"),
    ("empty batch", {"inputs": []}, None, 422, "inputs"),
    ("NaN", b'{"model_id": "MODEL", "inputs": [[NaN, 0.1]]}', "application/json", 422, "inputs"),
    ("infinity", b'{"model_id": "MODEL", "inputs": [[Infinity, 0.1]]}', "application/json", 422, "inputs"),
    ("strings", {"inputs": [["a", "b"]]}, None, 422, "inputs.0.0"),
    ("unknown backend", {"backend": "qpu:nowhere"}, None, 422, "backend"),
    ("unknown model", {"model_id": "no-such-model"}, None, 404, "model_id"),
    ("zero shots", {"backend": "aer", "shots": 0}, None, 422, "shots"),
    ("too many shots", {"backend": "aer", "shots": 10**8}, None, 422, "shots"),
    ("bad pack", {"backend": "aer", "shots": 10, "pack": 99}, None, 422, "pack"),
    ("unknown option", {"backend": "aer", "shots": 10, "options": {"warp": 9}}, None, 422, "options.warp"),
    ("extra field", {"colour": "blue"}, None, 422, "colour"),
    ("even scale factor", {"backend": "aer:fake_melbourne", "shots": 10,
                           "mitigation": {"method": "zne", "scale_factors": [1, 2]}}, None, 422,
     "mitigation.scale_factors"),
    ("non-positive scale factor", {"backend": "aer:fake_melbourne", "shots": 10,
                                   "mitigation": {"method": "zne", "scale_factors": [-1, 1]}}, None, 422,
     "mitigation.scale_factors"),
    ("eight scale factors", {"backend": "aer:fake_melbourne", "shots": 10,
                             "mitigation": {"method": "zne", "scale_factors": [1, 3, 5, 7, 9, 11, 13, 15]}},
     None, 422, "mitigation.scale_factors"),
    ("unknown extrapolation", {"backend": "aer:fake_melbourne", "shots": 10,
                               "mitigation": {"method": "zne", "extrapolation": "cubic"}}, None, 422,
     "mitigation.extrapolation"),
    ("unknown mitigation", {"backend": "aer", "shots": 10, "mitigation": "magic"}, None, 422, "mitigation"),
    ("mitigation exact cannot do", {"backend": "exact", "mitigation": "readout"}, None, 422, "mitigation"),
    ("wrong content type", b"model_id=x", "text/plain", 415, None),
]


@pytest.mark.parametrize(("case", "change", "content_type", "status", "field"), BAD_JOBS, ids=[c[0] for c in BAD_JOBS])
def test_bad_job_requests_are_refused_and_store_nothing(svc, qc, model_id, case, change, content_type, status, field):
    before = counts(svc)
    if isinstance(change, bytes):
        response = qc.http.post("/v1/jobs", content=change.replace(b"MODEL", model_id.encode()),
                                headers={"Content-Type": content_type})
    else:
        body = {"model_id": model_id, "inputs": [[0.1, 0.2]], **change}
        response = qc.http.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"] and error["field"] == field
    assert counts(svc) == before


def test_payload_over_the_limit_is_413_and_stores_nothing(svc: LocalService, qc: Client, model_id: str) -> None:
    before = counts(svc)
    big = {"model_id": model_id, "inputs": [[0.1, 0.2]] * 300_000}  # 3 MB > the 2 MiB limit
    response = qc.http.post("/v1/jobs", json=big)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
    streamed = qc.http.post("/v1/jobs", content=iter([b"x" * 2**20] * 3), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert counts(svc) == before


def test_bad_model_uploads_are_refused_and_store_nothing(svc, qc: Client, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    before = counts(svc)
    evil_zip = tmp_path / "evil_zip.pt"
    torch.save({"layers.0.theta": _Evil()}, evil_zip)
    (tmp_path / "kwargs.json").write_text(json.dumps({"width": [2, 1]}))
    cases = [
        ({"file": ("m.safetensors", b"definitely not safetensors")}, "model"),
        ({"file": ("raw.pt", pickle.dumps({"x": _Evil()}))}, "model"),
        ({"file": ("zip.pt", evil_zip.read_bytes())}, "model"),
        ({"file": ("m.pt", evil_zip.read_bytes()), "spec": ("s.json", b"{broken")}, "spec"),
        ({"file": ("m.safetensors", b"x" * 100), "spec": ("s.json", json.dumps({"width": [2, 1], "group": 2}))},
         "spec.group"),
    ]
    for files, field in cases:
        if "spec" not in files and field == "model":
            files = {**files, "spec": ("kwargs.json", (tmp_path / "kwargs.json").read_bytes())}
        response = qc.http.post("/v1/models", files=files)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == field
    assert qc.http.post("/v1/models", data={"name": "no file"}).status_code == 422
    assert counts(svc) == before
    assert not (tmp_path / "PWNED").exists()


def _finished_jobs(svc: LocalService, token: str, count: int) -> None:
    """``count`` succeeded jobs of two rounds each for the key ``token``, written straight to the database."""
    with session_scope(svc.settings.resolved_database_url) as session:
        owner = find_key(session, token).id  # type: ignore[union-attr]
        ids = [str(uuid.uuid4()) for _ in range(count)]
        session.add_all(JobRow(id=i, owner_id=owner, kind="inference", backend="exact", queue="local", request_hash="",
                               state=JobState.SUCCEEDED, rounds_done=2, rounds_total=2, samples=1, inputs=b"")
                        for i in ids)
        session.flush()
        session.add_all(Round(job_id=i, number=k, rows=1, requested=1, provider_job_ids=[f"{i}/{k}"])
                        for i in ids for k in range(2))


def test_listing_jobs_takes_the_same_few_statements_however_many_are_listed(svc: LocalService) -> None:
    token = svc.create_key("many jobs")
    engine = engine_for(svc.settings.resolved_database_url)  # the engine of the API running in this process
    statements: list[str] = []

    def record(_conn, _cursor, statement, *_) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    def statements_of_a_page() -> tuple[int, dict]:
        statements.clear()
        event.listen(engine, "before_cursor_execute", record)
        try:
            page = httpx.get(f"{svc.url}/v1/jobs", params={"limit": 500}, headers={"Authorization": f"Bearer {token}"},
                             timeout=60).json()
        finally:
            event.remove(engine, "before_cursor_execute", record)
        return len(statements), page

    _finished_jobs(svc, token, 5)
    few, page = statements_of_a_page()
    assert page["total"] == len(page["items"]) == 5
    _finished_jobs(svc, token, 495)
    many, page = statements_of_a_page()
    assert page["total"] == len(page["items"]) == 500
    assert all([r["number"] for r in j["rounds"]] == [0, 1] and len(j["provider_job_ids"]) == 2 for j in page["items"])
    # the key (unless cached), the count, the jobs, all their rounds: never a query per job
    assert few <= 4 and many <= 4, statements


def test_concurrent_first_backend_listings_list_the_backends_once(svc: LocalService, monkeypatch) -> None:
    from qkan_orch.backends import get_backend
    from qkan_orch.service.api.routes import backends as route

    calls = []

    def slow_listing() -> list:
        calls.append(time.monotonic())
        time.sleep(0.5)  # long enough for every request below to arrive while it runs
        return [get_backend("exact").capabilities()]

    token = svc.create_key("backends")
    monkeypatch.setattr(route, "list_backends", slow_listing)
    route._listed.cache_clear()  # as on a fresh API process
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: httpx.get(f"{svc.url}/v1/backends", timeout=60,
                                                        headers={"Authorization": f"Bearer {token}"}), range(4)))
    finally:
        route._listed.cache_clear()  # the next test lists the real backends again
    assert len(calls) == 1
    assert all(a.status_code == 200 and [b["name"] for b in a.json() if b["configured"]] == ["exact"] for a in answers)
