"""Quotes before running (issue 11 item 2): POST /v1/estimate, Client.estimate and ``submit --dry-run``.

Real service (uvicorn, system Redis, PostgreSQL; no worker: nothing here runs). No provider account is set,
as on a newcomer's machine: IBM and Braket hardware is quoted from the price table and published limits. The
expected figures are worked out here from the README's price table, not read back from the code's constants.
"""

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from conftest import make_model
from qkan_orch.client import ApiError, Client
from qkan_orch.models import save_model
from qkan_orch.service.local import LocalService
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.tables import Job
from service_env import stack_env

GARNET = "braket:arn:aws:braket:eu-north-1::device/qpu/iqm/Garnet"
CLI = str(Path(sys.executable).parent / "qkan-orch")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    tmp = tmp_path_factory.mktemp("estimate")
    with stack_env("system-redis+postgresql", tmp) as env, LocalService(tmp, env).running(workers=0) as service:
        yield service


@pytest.fixture(scope="module")
def qc(svc: LocalService) -> Iterator[Client]:
    with Client(svc.url, svc.create_key("quotes")) as client:
        yield client


def upload(client: Client, width: list[int], folder: Path) -> str:
    """The id of a reps-2 model of ``width`` uploaded with ``client``'s key (models belong to a key)."""
    path = folder / f"{'-'.join(map(str, width))}.safetensors"
    save_model(make_model(width=width, reps=2), str(path))
    return client.upload_model(path).id


@pytest.fixture(scope="module")
def models(qc: Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Model ids by width: the README's [4, 8, 1] example and a small [2, 3, 1]."""
    tmp = tmp_path_factory.mktemp("models")
    return {str(width): upload(qc, width, tmp) for width in ([2, 3, 1], [4, 8, 1])}


def jobs_stored(svc: LocalService) -> int:
    with session_scope(svc.settings.resolved_database_url) as session:
        return session.scalar(select(func.count()).select_from(Job))


def test_ibm_hardware_is_quoted_without_an_account_at_the_published_rate(qc: Client, models: dict) -> None:
    # [2, 3, 1] on 8 samples: rounds of 8·6 = 48 and 8·3 = 24 edge circuits; packed 4 wide: 12 + 6 executions
    quote = qc.estimate(models["[2, 3, 1]"], 8, "ibm:ibm_torino", shots=1000, pack=4, mitigation="none")
    assert not quote.configured and any("QKAN_IBM_TOKEN" in a for a in quote.assumptions)
    assert (quote.rounds, quote.circuits, quote.width, quote.shots) == (2, 72, 4, 1000)
    e = quote.estimate
    assert (e.executions, e.shots, e.tasks) == (18, 18_000, 2)  # one Runtime job per round
    # README: USD 1.60 per QPU second, estimated as 2 s per job + 250 µs per shot
    assert e.qpu_seconds == pytest.approx(2 * 2 + 18_000 * 250e-6)
    assert e.cost == pytest.approx(1.60 * e.qpu_seconds)
    assert quote.price["per_second"] == pytest.approx(1.60) and "IBM" in quote.price["source"]
    # the default on a QPU is read-out correction: its calibration circuits cost more
    default = qc.estimate(models["[2, 3, 1]"], 8, "ibm:ibm_torino", shots=1000, pack=4)
    assert default.mitigation["method"] == "readout" and default.estimate.executions > e.executions
    # the published snapshot has a calibration, so pack="auto" picks a width from it
    auto = qc.estimate(models["[2, 3, 1]"], 8, "ibm:ibm_torino", shots=1000, pack="auto", mitigation="none")
    assert 1 <= auto.width <= 133 and auto.estimate.executions == math.ceil(48 / auto.width) + math.ceil(
        24 / auto.width)


def test_braket_hardware_is_quoted_as_in_the_readme_example(qc: Client, models: dict) -> None:
    # README: [4, 8, 1] on 64 samples is 2 560 edge circuits; packed 20 wide ⌈2048/20⌉ + ⌈512/20⌉ = 129 circuits
    quote = qc.estimate(models["[4, 8, 1]"], np.zeros((64, 4)), GARNET, shots=1000, pack=20, mitigation="none")
    assert not quote.configured and quote.circuits == 2560
    e = quote.estimate
    assert (e.executions, e.shots) == (129, 129_000)
    # without the device's program-set limits every circuit is a task: USD 0.30 each + 0.00145 per shot
    assert e.tasks == 129 and any("task" in a for a in quote.assumptions)
    assert e.cost == pytest.approx(129 * 0.30 + 129_000 * 0.00145)


@pytest.mark.parametrize(("backend", "pack", "field", "words"), [
    ("ibm:ibm_torin0", None, "backend", "did you mean ibm_torino"),
    ("braket:arn:aws:braket:eu-north-1::device/qpu/iqm/Garnett", None, "backend", "iqm/Garnet"),
    ("braket:arn:aws:braket:eu-north-1::Garnet", None, "backend", "not an Amazon Braket device ARN"),
    (GARNET, "auto", "pack", "calibration"),
    (GARNET, 21, "pack", "1..20"),
])
def test_what_cannot_be_quoted_is_a_422_naming_the_field(qc: Client, models: dict, backend: str,
                                                         pack: int | str | None, field: str, words: str) -> None:
    with pytest.raises(ApiError) as err:
        qc.estimate(models["[2, 3, 1]"], 8, backend, shots=100, pack=pack)
    assert (err.value.status, err.value.field) == (422, field) and words in err.value.message


def test_a_quote_is_what_the_submission_stores_and_budgets_refuse_alike(svc: LocalService,
                                                                        tmp_path: Path) -> None:
    settings = {"backend": "aer", "shots": 500, "pack": 3, "options": {"seed": 1}, "mitigation": "readout"}
    inputs = np.zeros((10, 2))
    with Client(svc.url, svc.create_key("budgeted", max_shots=10**6)) as qc:
        model = upload(qc, [2, 3, 1], tmp_path)
        quote = qc.estimate(model, inputs, **settings)
        assert quote.configured and quote.assumptions == [] and quote.within_budget
        job = qc.submit(model, inputs, **settings)
        assert job.estimate == quote.estimate and job.mitigation == quote.mitigation
    with Client(svc.url, svc.create_key("poor", max_shots=quote.estimate.shots - 1)) as poor:
        model = upload(poor, [2, 3, 1], tmp_path)
        refused = poor.estimate(model, 10, **settings)
        assert not refused.within_budget and "shots" in refused.budget_message
        before = jobs_stored(svc)
        with pytest.raises(ApiError) as err:
            poor.submit(model, inputs, **settings)
        assert err.value.status == 402 and err.value.message == refused.budget_message
        assert jobs_stored(svc) == before


def test_submitting_to_unconfigured_hardware_is_refused_and_stores_nothing(svc: LocalService, qc: Client,
                                                                          models: dict) -> None:
    before = jobs_stored(svc)
    with pytest.raises(ApiError) as err:
        qc.submit(models["[2, 3, 1]"], np.zeros((2, 2)), GARNET, shots=100, pack=2)
    assert err.value.status == 422 and err.value.field == "QKAN_BRAKET_S3_BUCKET"
    assert jobs_stored(svc) == before


def readme_quote() -> list[str]:
    """The output of the README's ``submit --dry-run`` example, as printed (the lines after the command)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("$ qkan-orch submit --dry-run", 1)[1].split("```", 1)[0]
    return block.split("\n", 2)[2].splitlines()


def cli(*args: str, svc: LocalService, key: str) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("QKAN_")}, "QKAN_URL": svc.url,
           "QKAN_API_KEY": key}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120)


def test_submit_dry_run_prints_the_quote_and_submits_nothing(svc: LocalService, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((64, 4)))
    before = jobs_stored(svc)
    key = svc.create_key("cli")
    with Client(svc.url, key) as own:
        model = upload(own, [4, 8, 1], tmp_path)
    common = ("submit", "--dry-run", "--model", model, "--backend", GARNET, "--shots", "1000", "--pack", "20",
              "--mitigation", "none")
    done = cli(*common, "--inputs", str(tmp_path / "x.npy"), svc=svc, key=key)
    assert done.returncode == 0, done.stderr
    assert "129 circuit executions" in done.stdout and "USD 225.75" in done.stdout and "assumes:" in done.stdout
    assert cli(*common, "--samples", "64", svc=svc, key=key).stdout.splitlines() == readme_quote()
    as_json = cli(*common, "--samples", "64", "--json", svc=svc, key=key)
    assert json.loads(as_json.stdout)["estimate"]["cost"] == pytest.approx(225.75)
    missing = cli(*common, svc=svc, key=key)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "inputs" in missing.stderr
    assert jobs_stored(svc) == before
