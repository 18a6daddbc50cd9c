"""Bounds before work: every quantity a request controls is refused over its setting before anything is
allocated, and a job over the worker's memory ceiling fails alone while its worker goes on.

Where a test bounds memory, the bound is the issue's acceptance: a refusal with the API's RSS growing by less
than 50 MB (before, a [4000, 4000] spec made the API allocate 2 GB and stall for seconds). Time is not
asserted here (tests make no timing assertions): an allocation is what a slow refusal would have to make, and
the RSS bound catches it on any machine.
The API runs in this process (LocalService's thread), so its RSS is this process's; workers are real Celery
processes on the system Redis.
"""

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import torch
from safetensors.torch import save as save_tensors

from conftest import make_inputs, make_model
from qkan_orch.client import ApiError, Client, JobState
from qkan_orch.models import model_from_bytes, model_to_bytes, parse_spec, save_model
from qkan_orch.models.errors import InputError
from qkan_orch.models.network import build_model
from qkan_orch.models.spec import SpecLimits
from qkan_orch.service.local import LocalService
from service_env import stack_env

MB = 2**20
REFUSAL_RSS = 50 * MB  # the issue: "the API's RSS growing by less than 50 MB"
HUGE = [4000, 4000]  # 16·10⁶ edges: 288·10⁶ numbers, about 1.2 GB as float32 had the model been built
ENORMOUS = [100_000, 100_000]  # wider than any layer may be
LIMITS = SpecLimits(layers=16, width=4096, reps=100, numbers=10_000_000, window=1024)  # the settings' defaults

# -- the spec knows its size, so nothing needs building to refuse it ---------------------------------------------


@pytest.mark.parametrize("spec", [
    {"width": [3, 4, 2], "reps": 2},
    {"width": [2, 5, 1], "reps": 4, "ansatz": "rpz", "preact_trainable": True},
    {"width": [3, 4, 2], "reps": 3, "ansatz": "real", "is_map": True, "hidden": 6},
    {"kind": "hqkan", "in_dim": 7, "out_dim": 3, "qkan": {"width": [4, 5, 2], "reps": 1}},
])
def test_a_specs_size_is_the_number_of_values_its_model_holds(spec: dict) -> None:
    parsed = parse_spec(spec)
    model = build_model(parsed)
    assert parsed.state_size == sum(t.numel() for t in model.state_dict().values())
    assert parsed.columns == model.stages()[1 if spec.get("kind") == "hqkan" else 0].ansatz.num_params


@pytest.mark.parametrize(("spec", "field", "words"), [
    ({"width": ENORMOUS}, "spec.width", "100000 units"),
    ({"width": [2] * 20}, "spec.width", "19 QKAN layers"),
    ({"width": [2, 1], "reps": 10**20}, "spec.reps", "limit of 100"),
    ({"width": HUGE}, "spec", "288,000,000 numbers"),
    ({"width": [2, 2, 1], "is_map": True, "hidden": 5000}, "spec.hidden", "5000 units"),
    ({"kind": "hqkan", "in_dim": 10**6, "qkan": {"width": [2, 1]}}, "spec.in_dim", "1000000 units"),
    ({"kind": "hqkan", "in_dim": 2, "qkan": {"width": [2, 1], "reps": 10**6}}, "spec.qkan.reps", "limit of 100"),
    ({"kind": "qkan-lstm", "hidden": 2, "window": 4, "gate": {"reps": 10**6}}, "spec.gate.reps", "limit of 100"),
    ({"kind": "qkan-lstm", "hidden": 2, "window": 4, "layers": 30}, "spec.layers", "30 LSTM layers"),
    ({"kind": "hqkan-lstm", "hidden": 2, "window": 4, "latent": 10**6}, "spec.latent", "1000000 units"),
    ({"kind": "lstm", "hidden": 10**6, "window": 4}, "spec.hidden", "1000000 units"),
    ({"kind": "qkan-lstm", "hidden": 2, "window": 10**8}, "spec.window", "100,000,000 time steps"),
])
def test_spec_limits_name_the_option_and_the_limit(spec: dict, field: str, words: str) -> None:
    with pytest.raises(InputError) as err:
        LIMITS.check(parse_spec(spec))
    assert err.value.field == field and words in err.value.message


def test_a_file_is_refused_from_its_header_before_a_tensor_is_read() -> None:
    tiny = {"w": torch.zeros(1)}
    lying = save_tensors(tiny, metadata={"spec": json.dumps({"width": HUGE})})
    with pytest.raises(InputError) as err:
        model_from_bytes(lying, limits=LIMITS)
    assert err.value.field == "model.spec" and "288,000,000 numbers" in err.value.message

    small = make_model(width=[2, 3, 1]).float()
    with pytest.raises(InputError) as err:  # the header's shapes hold more than the limit allows
        model_from_bytes(model_to_bytes(small), limits=SpecLimits(16, 4096, 100, numbers=10, window=1024))
    assert err.value.field in ("model", "model.spec")

    pt = io.BytesIO()
    torch.save(small.state_dict(), pt)
    with pytest.raises(InputError) as err:  # a .pt: its spec is checked before torch.load
        model_from_bytes(pt.getvalue(), parse_spec({"width": HUGE}), limits=LIMITS)
    assert err.value.field == "spec"
    assert model_from_bytes(model_to_bytes(small), limits=LIMITS).spec == small.spec


# -- through the service -----------------------------------------------------------------------------------------

CEILING = 800 * MB  # a worker child: ~300 MB of imports (VmData), so ~500 MB for a job's arrays


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[tuple[LocalService, Client, Path]]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("bounds")
    with stack_env("system-redis+sqlite", tmp) as env:
        env["QKAN_WORKER_MAX_MEMORY"] = str(CEILING)
        env["QKAN_MAX_PAYLOAD_BYTES"] = str(64 * MB)  # room for the slow upload of the /healthz test
        with LocalService(tmp, env, concurrency=1) as local, Client(local.url, local.create_key()) as qc:
            save_model(make_model(width=[2, 3, 1]).float(), str(tmp / "small.safetensors"))
            qc.upload_model(tmp / "small.safetensors")  # warm the upload path: later growth is the request's own
            yield local, qc, tmp


@contextmanager
def peak_growth() -> Iterator[Callable[[], int]]:
    """This process's (the API's) peak RSS growth while the block runs, sampled every millisecond."""
    process, peak, done = psutil.Process(), [0], threading.Event()
    start = process.memory_info().rss

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss - start)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: peak[0]
    finally:
        done.set()
        sampler.join()


def refused_before_allocating(request: Callable[[], object], status: int, field: str | None) -> ApiError:
    with peak_growth() as growth:
        with pytest.raises(ApiError) as err:
            request()
    assert (err.value.status, err.value.field) == (status, field), err.value
    assert growth() < REFUSAL_RSS, f"the API's RSS grew by {growth() / MB:.0f} MB"
    return err.value


def spec_file(tmp: Path, width: list[int]) -> Path:
    path = tmp / f"spec-{'x'.join(map(str, width))}.json"
    path.write_text(json.dumps({"width": width}))
    return path


@pytest.mark.parametrize("width", [HUGE, ENORMOUS], ids=["4000x4000", "100000x100000"])
def test_oversized_specs_are_refused_fast_without_allocating(service, width: list[int]) -> None:  # type: ignore[no-untyped-def]
    _, qc, tmp = service
    field = "spec" if width == HUGE else "spec.width"
    err = refused_before_allocating(lambda: qc.upload_model(tmp / "small.safetensors", spec_file(tmp, width)),
                                    422, field)
    assert "this service's limit" in err.message

    pt = tmp / "small.pt"
    torch.save(make_model(width=[2, 3, 1]).float().state_dict(), pt)
    refused_before_allocating(lambda: qc.upload_model(pt, spec_file(tmp, width)), 422, field)

    lying = tmp / f"lying-{width[0]}.safetensors"  # tiny weights, a huge spec in the metadata
    lying.write_bytes(save_tensors({"w": torch.zeros(1)}, metadata={"spec": json.dumps({"width": width})}))
    refused_before_allocating(lambda: qc.upload_model(lying), 422, f"model.{field}")

    refused_before_allocating(lambda: qc.train({"width": width}, function="sin"), 422, field)
    assert qc.jobs().total == 0 and qc.models().total == 1  # nothing stored but the fixture's model


@pytest.mark.parametrize("reps", [10**6, 10**20])
def test_training_with_absurd_reps_is_refused(service, reps: int) -> None:  # type: ignore[no-untyped-def]
    _, qc, _ = service
    err = refused_before_allocating(lambda: qc.train({"width": [1, 2, 1], "reps": reps}, function="sin"),
                                    422, "spec.reps")
    assert "limit of 100" in err.message


def test_training_samples_steps_and_step_memory_are_bounded(service) -> None:  # type: ignore[no-untyped-def]
    _, qc, _ = service
    tiny = {"width": [1, 2, 1]}
    refused_before_allocating(lambda: qc.train(tiny, function="sin", samples=100_001), 422, "samples")
    refused_before_allocating(lambda: qc.train(tiny, function="sin", steps=10**9), 422, "steps")
    # 100 000 samples × (1 000 + 1 000) edges: 2·10⁸ circuits in one step
    wide = {"width": [1, 1000, 1]}
    err = refused_before_allocating(lambda: qc.train(wide, function="sin", samples=100_000), 422, "samples")
    assert "200,000,000 circuits" in err.message
    # 1 200 samples × 1 600 edges = 1.92·10⁶ circuits: within the rows per step, but × (16·11 + 400) B ≈ 1.03 GiB
    err = refused_before_allocating(lambda: qc.train({"width": [1, 800, 1]}, function="sin", samples=1200),
                                    422, "samples")
    assert "worker memory" in err.message and "1.0GiB" in err.message
    assert qc.jobs().total == 0


def test_more_samples_than_a_job_may_carry_are_refused_fast(service) -> None:  # type: ignore[no-untyped-def]
    _, qc, tmp = service
    small = qc.models().items[-1].id
    np.save(tmp / "many.npy", make_inputs(100_001, 2))  # one sample over QKAN_MAX_SAMPLES, as a 1.6 MB upload
    err = refused_before_allocating(lambda: qc.submit(small, tmp / "many.npy"), 422, "inputs")
    assert "100,001 samples" in err.message and "100,000" in err.message


@pytest.fixture(scope="module")
def wide_model(service) -> str:  # type: ignore[no-untyped-def]
    """[2, 2000, 1]: 6 000 edges, 10⁵ numbers — a model any service takes; its rounds are what is big."""
    _, qc, tmp = service
    save_model(build_model(parse_spec({"width": [2, 2000, 1]})), str(tmp / "wide.safetensors"))
    return qc.upload_model(tmp / "wide.safetensors").id


@pytest.mark.parametrize("backend", ["exact", "aer:fake_melbourne"])
def test_a_wide_model_with_ten_thousand_inputs_is_refused_by_its_estimate(service, wide_model: str,  # type: ignore[no-untyped-def]
                                                                         backend: str) -> None:
    _, qc, _ = service
    x = make_inputs(10_000, 2)
    shots = None if backend == "exact" else 20_000
    err = refused_before_allocating(lambda: qc.submit(wide_model, x, backend=backend, shots=shots), 422, "inputs")
    assert "40,000,000 circuits" in err.message and "2,000,000 per round" in err.message


def test_the_estimate_bounds_memory_executions_and_shots(service) -> None:  # type: ignore[no-untyped-def]
    _, qc, tmp = service
    save_model(build_model(parse_spec({"width": [2, 200, 1]})), str(tmp / "mid.safetensors"))
    mid = qc.upload_model(tmp / "mid.safetensors").id
    job = qc.submit(mid, make_inputs(5, 2), backend="aer", shots=100)  # the API loads Aer here, not below
    assert job.estimate is not None and job.estimate.peak_bytes == 5 * 400 * (16 * 11 + 400)
    # 5 000 samples × 400 edges = 2·10⁶ rows: at the rows limit, but 2·10⁶ × (16·11 + 400) B ≈ 1.07 GiB > 1 GiB
    err = refused_before_allocating(lambda: qc.submit(mid, make_inputs(5000, 2)), 422, "inputs")
    assert "worker memory" in err.message
    # 500 samples: 2·10⁵ rows → 2.5·10⁴ executions at pack 8, × 10⁶ shots = 2.5·10¹⁰ shots > 10¹⁰
    err = refused_before_allocating(lambda: qc.submit(mid, make_inputs(500, 2), backend="aer", shots=10**6),
                                    422, "shots")
    assert "10,000,000,000" in err.message
    exact = qc.submit(mid, make_inputs(50, 2))
    assert exact.estimate is not None and exact.estimate.peak_bytes > 0  # exact's estimate is not all zeros
    for j in (job, exact):
        assert qc.wait(j.id, timeout=120, progress=False).state == JobState.SUCCEEDED


# -- /healthz while uploads are parsed ---------------------------------------------------------------------------


def test_healthz_answers_while_a_large_upload_is_parsed(service) -> None:  # type: ignore[no-untyped-def]
    """A 60 MB CSV takes this API over a second to parse; /healthz answers again and again meanwhile. Parsed on
    the event loop, every /healthz would wait for the parse and the poller would see one or two answers before
    the upload ends; the worst wait is printed, not asserted (no timing assertions in tests)."""
    local, qc, tmp = service
    csv = tmp / "big.csv"
    csv.write_bytes(b"x,y\n" + b"0.12345678901234567,0.23456789012345678\n" * 1_500_000)  # 60 MB, 1.5·10⁶ rows
    result: list[object] = []
    upload = threading.Thread(target=lambda: result.append(_refusal(lambda: qc.train({"width": [1, 1]}, csv=csv))))
    worst, polls = 0.0, 0
    with httpx.Client(base_url=local.url) as http:
        upload.start()
        while upload.is_alive():
            # timed from before the pause: the poller shares the API's process, so a parse that held the GIL
            # would stall it in its sleep as much as in its request
            began = time.perf_counter()
            time.sleep(0.02)
            assert http.get("/healthz").status_code == 200
            worst, polls = max(worst, time.perf_counter() - began - 0.02), polls + 1
    upload.join()
    (err,) = result
    assert isinstance(err, ApiError) and (err.status, err.field) == (422, "csv")
    assert "1,500,000 samples" in err.message  # read to the end, then refused by QKAN_MAX_SAMPLES
    assert polls >= 5, f"/healthz answered only {polls} time(s) during the upload"
    print(f"/healthz during the upload: {polls} answers, worst wait {worst:.3f} s")


def _refusal(request: Callable[[], object]) -> ApiError | None:
    try:
        request()
    except ApiError as exc:
        return exc
    return None


# -- the worker's memory ceiling ---------------------------------------------------------------------------------


def test_a_job_over_the_memory_ceiling_fails_and_the_same_worker_runs_the_next(service) -> None:  # type: ignore[no-untyped-def]
    local, qc, tmp = service
    save_model(build_model(parse_spec({"width": [2, 200, 1]})), str(tmp / "greedy.safetensors"))
    model = qc.upload_model(tmp / "greedy.safetensors").id
    modest = lambda: qc.submit(model, make_inputs(20, 2))  # noqa: E731
    assert qc.wait(modest().id, timeout=120, progress=False).state == JobState.SUCCEEDED
    children = {p.pid for p in psutil.Process(local.workers[0].pid).children(recursive=True)}
    assert children, "the worker has no pool child"

    # 4 000 × 400 = 1.6·10⁶ rows: ~0.9 GB by its estimate (within QKAN_MAX_JOB_MEMORY), ~0.8 GB in fact (exact),
    # more than the 800 MB ceiling leaves a job
    greedy = qc.submit(model, make_inputs(4000, 2))
    failed = qc.wait(greedy.id, timeout=120, progress=False)
    assert failed.state == JobState.FAILED and failed.error is not None
    assert failed.error.code == "memory_limit" and "QKAN_WORKER_MAX_MEMORY" in failed.error.message

    assert qc.wait(modest().id, timeout=120, progress=False).state == JobState.SUCCEEDED
    assert {p.pid for p in psutil.Process(local.workers[0].pid).children(recursive=True)} == children  # same child


def test_a_json_body_over_its_limit_is_413_and_points_to_file_uploads(service) -> None:  # type: ignore[no-untyped-def]
    """JSON is parsed holding the interpreter, so a JSON job body stops at QKAN_MAX_JSON_BYTES (2 MiB) — below
    the 64 MB payload limit this stack allows — before it is parsed, and nothing is stored."""
    _, qc, tmp = service
    save_model(make_model(width=[2, 2, 1]).float(), str(tmp / "json.safetensors"))
    mid = qc.upload_model(tmp / "json.safetensors").id
    rows = [[0.1, 0.2]] * 300_000  # about 3 MB of JSON
    before = len(qc.jobs(limit=500).items)
    response = qc.http.post("/v1/jobs", json={"model_id": mid, "inputs": rows, "backend": "exact"})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("payload_too_large", "inputs") and ".npy" in error["message"]
    assert len(qc.jobs(limit=500).items) == before
