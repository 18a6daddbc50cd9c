"""Budgets refuse jobs before submission; provider secrets never leave the process that holds them."""

import os
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from conftest import make_inputs, make_model
from qkan_orch.backends.accounts import accounts
from qkan_orch.backends.base import round_bytes
from qkan_orch.client import ApiError, Client, Estimate, JobState
from qkan_orch.models import save_model
from qkan_orch.service.local import LocalService
from service_env import stack_env

pytestmark = pytest.mark.usefixtures("plugin_backends")
PLANTED = "planted-secret-7f3a9c1e5b"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("budget")
    saved = {k: os.environ.get(k) for k in ("QKAN_IBM_TOKEN", "QKAN_BACKEND_PLUGINS")}
    os.environ["QKAN_IBM_TOKEN"] = PLANTED  # the API runs in this process
    os.environ["QKAN_BACKEND_PLUGINS"] = "support.plugin_backends"
    accounts.cache_clear()
    with stack_env("system-redis+postgresql", tmp) as env:
        local = LocalService(tmp, {**env, "QKAN_IBM_TOKEN": PLANTED, "QKAN_TASK_MAX_RETRIES": "1"}, concurrency=1)
        local.start(workers=1)
        try:
            model = make_model(width=[2, 3, 1], reps=2).float()
            save_model(model, str(tmp / "m.safetensors"))
            yield local, tmp
        finally:
            local.stop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            accounts.cache_clear()


def client_with_budget(local: LocalService, tmp: Path, **budget: float) -> tuple[Client, str]:
    qc = Client(local.url, local.create_key(**budget))  # type: ignore[arg-type]
    return qc, qc.upload_model(tmp / "m.safetensors").id


def test_a_shot_budget_refuses_the_job_that_would_exceed_it(service) -> None:  # type: ignore[no-untyped-def]
    local, tmp = service
    qc, model_id = client_with_budget(local, tmp, max_shots=10_000)
    x = make_inputs(2, 2)  # rounds of 2·2·3 = 12 and 2·3·1 = 6 rows: 18 executions at pack 1
    # (unmitigated: a QPU's default read-out calibration adds its circuits, see test_service_api)
    with pytest.raises(ApiError) as err:
        qc.submit(model_id, x, backend="test:priced", mitigation="none", shots=1000)
    assert err.value.status == 402 and err.value.field == "shots"
    assert "18,000 shots" in err.value.message and "10,000" in err.value.message
    assert qc.jobs().total == 0  # nothing was written or queued
    for _ in range(5):  # 5 × 1,800 = 9,000 ≤ 10,000
        job = qc.submit(model_id, x, backend="test:priced", mitigation="none", shots=100)
        assert job.estimate == Estimate(tasks=2, executions=18, shots=1800, qpu_seconds=0.0,
                                        cost=pytest.approx(2 * 0.30 + 1800 * 0.001),
                                        peak_bytes=round_bytes(12, 8))  # its larger round: 12 rows of P = 8
        assert qc.wait(job.id, timeout=60, progress=False).state == JobState.SUCCEEDED
    with pytest.raises(ApiError) as err:  # the sixth would make 10,800
        qc.submit(model_id, x, backend="test:priced", mitigation="none", shots=100)
    assert err.value.status == 402 and "1,000 of its 10,000 left" in err.value.message
    packed = qc.submit(model_id, x, backend="test:priced", mitigation="none", shots=100,
                       pack=4)  # ⌈12/4⌉ + ⌈6/4⌉ = 5 circuits
    assert packed.estimate and packed.estimate.shots == 500
    final = qc.wait(packed.id, timeout=60, progress=False)
    assert final.shots_used == 500 and final.cost == pytest.approx(2 * 0.30 + 500 * 0.001)


def test_a_cost_budget_quotes_the_estimate(service) -> None:  # type: ignore[no-untyped-def]
    local, tmp = service
    qc, model_id = client_with_budget(local, tmp, max_cost=2.0)
    with pytest.raises(ApiError) as err:
        qc.submit(model_id, make_inputs(2, 2), backend="test:priced", mitigation="none", shots=1000)
    assert err.value.status == 402 and err.value.field == "budget"
    assert "$18.60" in err.value.message and "$2.00" in err.value.message  # 2 × 0.30 + 18,000 × 0.001
    assert qc.jobs().total == 0


def test_planted_secret_reaches_no_log_response_or_row(service) -> None:  # type: ignore[no-untyped-def]
    local, tmp = service
    qc, model_id = client_with_budget(local, tmp)
    x = make_inputs(2, 2)
    seen: list[str] = []
    for options in ({}, {"transient": True}):  # an SDK error with the token, raised and retried
        job = qc.submit(model_id, x, backend="test:leaky", options=options)
        final = qc.wait(job.id, timeout=60, progress=False)
        assert final.state == JobState.FAILED and final.error and "***" in final.error.message
        seen += [repr(final), repr(list(qc.events(job.id)))]
    with pytest.raises(ApiError) as err:  # a real device: the SDK is handed the token and fails offline
        qc.submit(model_id, x, backend="ibm:ibm_brisbane", shots=100)
    assert err.value.status in (422, 503) and err.value.field == "backend"
    seen += [err.value.message, repr(qc.backends())]
    assert not any(PLANTED in s for s in seen)

    logs = "".join(p.read_text(errors="replace") for p in Path(tmp).glob("**/*.log"))
    assert "authentication failed" in logs  # the worker did log the failure ...
    assert PLANTED not in logs  # ... without the secret
    engine = create_engine(local.settings.resolved_database_url)
    with engine.connect() as conn:
        for table in ("api_keys", "models", "jobs", "rounds", "job_events", "results"):
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                assert PLANTED not in repr(row), table
    engine.dispose()
