"""A newcomer's first hour: the README's Python snippet run twice, uploads that are content-addressed, and the
``keys`` and ``models`` commands against a running service (real HTTP, Redis, Celery, SQL; the CLI as a
subprocess)."""

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import qkan
import torch
from sqlalchemy import func, select

from conftest import make_inputs, make_model
from qkan_orch.client import Client, JobState
from qkan_orch.models import save_model
from qkan_orch.service.local import LocalService
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.tables import StoredModel
from service_env import stack_env
from support.cli_process import cli

pytestmark = pytest.mark.usefixtures("plugin_backends")
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.fixture(scope="module", params=["system-redis+postgresql", "system-redis+sqlite"])
def svc(request, tmp_path_factory) -> LocalService:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp(request.param)
    with stack_env(request.param, tmp) as env, LocalService(tmp, env, concurrency=1) as service:
        yield service


@pytest.fixture(scope="module")
def key(svc: LocalService) -> str:
    return svc.create_key("first-hour")


@pytest.fixture(scope="module")
def qc(svc: LocalService, key: str) -> Client:
    with Client(svc.url, key) as client:
        yield client


def readme_snippet() -> str:
    """The README's Python client example, as printed."""
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    matching = [b for b in blocks if "qc.upload_model(" in b]
    assert len(matching) == 1, "the README has one Python client example"
    return matching[0]


def digest_rows(svc: LocalService, owner_model_id: str) -> int:
    """How many models carry the digest of ``owner_model_id``'s (one: uploads are content-addressed)."""
    with session_scope(svc.settings.resolved_database_url) as session:
        row = session.get(StoredModel, owner_model_id)
        assert row is not None and row.digest is not None
        return session.scalar(select(func.count()).select_from(StoredModel).where(StoredModel.digest == row.digest))


def test_the_readme_snippet_runs_twice_with_the_same_model_and_job(svc: LocalService, key: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    code = readme_snippet()
    assert '"http://127.0.0.1:8000"' in code and '"qk_…"' in code
    code = code.replace('"http://127.0.0.1:8000"', repr(svc.url)).replace('"qk_…"', repr(key))
    save_model(make_model(width=[2, 3, 1], reps=2).float(), str(tmp_path / "model.safetensors"))
    monkeypatch.chdir(tmp_path)
    runs = []
    for _ in range(2):
        namespace = {"x": make_inputs(4, 2)}
        exec(compile(code, "README.md", "exec"), namespace)  # the documented example, as printed
        runs.append(namespace)
    first, second = runs
    assert first["model"].id == second["model"].id
    assert first["job"].id == second["job"].id
    assert first["done"].state == second["done"].state == JobState.SUCCEEDED
    assert np.array_equal(first["outputs"], second["outputs"]) and np.asarray(first["outputs"]).shape == (4, 1)


def test_the_same_upload_answers_200_with_the_model_stored_first(svc: LocalService, qc: Client,
                                                                  tmp_path: Path) -> None:
    kwargs = {"width": [2, 2, 1], "reps": 2, "seed": 11}
    torch.save(qkan.QKAN(**kwargs).state_dict(), tmp_path / "m.pt")
    (tmp_path / "kwargs.json").write_text(json.dumps(kwargs))

    def post(name: str | None = None) -> httpx.Response:
        files = {"file": ("m.pt", (tmp_path / "m.pt").read_bytes()),
                 "spec": ("kwargs.json", (tmp_path / "kwargs.json").read_bytes())}
        return qc.http.post("/v1/models", files=files, data={"name": name} if name else None)

    first = post("original")
    assert first.status_code == 201, first.text
    again, renamed = post(), post("another name")
    assert again.status_code == renamed.status_code == 200
    def record(response: httpx.Response) -> dict:  # SQLite drops the stored time's zone: compare it apart
        body = response.json()
        return {**body, "created_at": body["created_at"].removesuffix("Z")}

    assert record(again) == record(renamed) == record(first)  # the stored record, its first name included
    stored = first.json()
    # the same spec and weights in our own format: the same model (what is stored is digested, not the file)
    downloaded = tmp_path / "ours.safetensors"
    model_id = stored["id"]
    with session_scope(svc.settings.resolved_database_url) as session:
        downloaded.write_bytes(session.get(StoredModel, model_id).blob)
    assert qc.upload_model(downloaded).id == model_id
    assert digest_rows(svc, model_id) == 1
    # other weights, and the same bytes from another key, are other models
    torch.save(qkan.QKAN(**{**kwargs, "seed": 12}).state_dict(), tmp_path / "m.pt")
    changed = post()
    assert changed.status_code == 201 and changed.json()["id"] != model_id
    with Client(svc.url, svc.create_key("someone else")) as other:
        theirs = other.upload_model(downloaded)
        assert theirs.id != model_id and other.models().total == 1


def test_concurrent_identical_uploads_make_one_model(svc: LocalService, qc: Client, tmp_path: Path) -> None:
    path = tmp_path / "race.safetensors"
    save_model(make_model(seed=5, width=[3, 2, 1], reps=2).float(), str(path))
    content = path.read_bytes()

    def upload(_: int) -> httpx.Response:
        return qc.http.post("/v1/models", files={"file": ("race.safetensors", content)})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(upload, range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201], [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1 and digest_rows(svc, ids.pop()) == 1


def test_models_upload_prints_the_id_alone_or_with_json_the_record(svc: LocalService, key: str,
                                                                   tmp_path: Path) -> None:
    save_model(make_model(seed=7, width=[2, 2, 1], reps=1).float(), str(tmp_path / "m.safetensors"))
    env = {"QKAN_URL": svc.url, "QKAN_API_KEY": key}
    plain = cli("models", "upload", "--file", "m.safetensors", env=env, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    model_id = plain.stdout.strip()
    assert plain.stdout == f"{model_id}\n" and uuid.UUID(model_id)
    full = cli("models", "upload", "--file", "m.safetensors", "--json", env=env, cwd=tmp_path)
    assert full.returncode == 0, full.stderr
    record = json.loads(full.stdout)
    assert record["id"] == model_id and record["parameter_count"] > 0 and len(record["content_hash"]) == 64


def test_keys_create_uses_the_services_database_or_refuses_in_one_line(svc: LocalService, tmp_path: Path) -> None:
    settings = svc.settings
    envs = [{k: v for k, v in svc.env.items() if k.startswith("QKAN_")}]  # as the service was configured
    if settings.resolved_database_url.startswith("sqlite"):  # the data folder alone names the same SQLite file
        assert settings.resolved_database_url == f"sqlite:///{(svc.data_dir / 'qkan.db').resolve()}"
        envs.append({"QKAN_DATA_DIR": str(svc.data_dir)})
    for env in envs:
        created = cli("keys", "create", "--name", "from-cli", env=env, cwd=tmp_path)
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        answer = httpx.get(f"{svc.url}/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
    # elsewhere, with no data folder: one line naming QKAN_DATA_DIR, exit 2, and no database made
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for action in ("create", "list"):
        refused = cli("keys", action, env={}, cwd=elsewhere)
        assert refused.returncode == 2 and refused.stdout == ""
        assert len(refused.stderr.splitlines()) == 1 and "QKAN_DATA_DIR" in refused.stderr, refused.stderr
        assert str(elsewhere / "qkan-data") in refused.stderr
    assert list(elsewhere.iterdir()) == []
