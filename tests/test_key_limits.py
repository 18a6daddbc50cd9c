"""Limits per API key (request rate, active jobs), failed authentications per address, revoke and rotate.

A real service on the system Redis and a fresh PostgreSQL database, without workers: submitted jobs stay
queued, which is what the active-jobs limit counts. Requests that are meant to fail authentication come from
loopback addresses of their own (127.0.0.x), so the address limit they fill never refuses the other tests.
"""

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, insert, select

from conftest import make_inputs, make_model
from qkan_orch.client import ApiError, Client
from qkan_orch.models import save_model
from qkan_orch.service.api.rate_limits import _COUNT_ACTIVE
from qkan_orch.service.local import LocalService
from qkan_orch.service.store.database import engine_for, session_scope, upgrade
from qkan_orch.service.store.keys import create_key
from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import ApiKey, Comparison, Job
from service_env import postgres_url
from support.cli_process import cli

AUTH_FAILURES = 4
KEY_CACHE_SECONDS = 3  # short, so a revoke by another process (the CLI) is seen within the test's time
pytestmark = pytest.mark.service(workers=0, env={"QKAN_AUTH_FAILURES_PER_MINUTE": str(AUTH_FAILURES),
                                                "QKAN_KEY_CACHE_SECONDS": str(KEY_CACHE_SECONDS)})


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_model(make_model(width=[2, 2, 1], reps=1).float(), str(path))
    return path


def from_address(svc: LocalService, address: str, token: str) -> httpx.Client:
    """A client whose requests come from ``address`` (any 127.0.0.x reaches the loopback listener)."""
    return httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {token}"},
                        transport=httpx.HTTPTransport(local_address=address))


def jobs_of(svc: LocalService, token_key_id: int) -> int:
    with session_scope(svc.settings.resolved_database_url) as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == token_key_id)) or 0


def key_id(svc: LocalService, name: str) -> int:
    with session_scope(svc.settings.resolved_database_url) as session:
        return session.scalar(select(ApiKey.id).where(ApiKey.name == name))


def test_a_key_over_its_rate_gets_429_with_retry_after_and_another_key_does_not(svc: LocalService) -> None:
    slow, other = svc.create_key("slow", rate_limit=1.0), svc.create_key("other")
    with Client(svc.url, slow) as qc, Client(svc.url, other) as qo:
        answers = [qc.http.get("/v1/jobs") for _ in range(5)]  # a bucket of 2: some of these are refused
        refused = [r for r in answers if r.status_code == 429]
        assert refused and all(r.status_code in (200, 429) for r in answers)
        assert refused[0].json()["error"]["code"] == "rate_limited"
        assert "1 requests per second" in refused[0].json()["error"]["message"]
        assert int(refused[0].headers["Retry-After"]) >= 1
        assert all(qo.http.get("/v1/jobs").status_code == 200 for _ in range(5))
        time.sleep(int(refused[-1].headers["Retry-After"]))  # the bucket refills: the key works again
        assert qc.http.get("/v1/jobs").status_code == 200
        # the client waits out rate_limited answers (Retry-After) rather than failing: a polling loop slows down
        assert [qc.jobs().total for _ in range(5)] == [0] * 5


def test_active_jobs_over_the_keys_limit_are_refused_and_nothing_is_stored(svc: LocalService,
                                                                           model_file: Path) -> None:
    token = svc.create_key("busy", max_active_jobs=3)
    with Client(svc.url, token) as qc:
        model_id = qc.upload_model(model_file).id
        for seed in range(2):
            qc.submit(model_id, make_inputs(2, 2, seed=seed))
        with pytest.raises(ApiError) as refused:  # a reference and a backend: 2 + 2 > 3
            qc.compare(model_id, make_inputs(2, 2), ["aer"])
        assert refused.value.status == 429 and refused.value.code == "too_many_active_jobs"
        qc.submit(model_id, make_inputs(2, 2, seed=2))  # the third fits
        answer = qc.http.post("/v1/jobs", json={"model_id": model_id, "inputs": [[0.1, 0.2]], "backend": "exact"})
        assert answer.status_code == 429 and answer.json()["error"]["code"] == "too_many_active_jobs"
        assert int(answer.headers["Retry-After"]) >= 1
    assert jobs_of(svc, key_id(svc, "busy")) == 3
    with session_scope(svc.settings.resolved_database_url) as session:
        assert session.scalar(select(func.count()).select_from(Comparison)) == 0


def test_keys_create_stores_the_keys_own_limits(svc: LocalService, tmp_path: Path) -> None:
    env = {k: v for k, v in svc.env.items() if k.startswith("QKAN_")}
    made = cli("keys", "create", "--name", "limited", "--rate-limit", "2.5", "--max-active-jobs", "7",
               env=env, cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    with session_scope(svc.settings.resolved_database_url) as session:
        key = session.scalar(select(ApiKey).where(ApiKey.name == "limited"))
        assert (key.rate_limit, key.max_active_jobs) == (2.5, 7)
    listed = cli("keys", "list", env=env, cwd=tmp_path)
    assert "2.5/s, active≤7" in listed.stdout
    bad = cli("keys", "create", "--rate-limit", "0", env=env, cwd=tmp_path)
    assert bad.returncode != 0 and "--rate-limit" in bad.stderr


def test_failed_authentications_per_address_get_429_before_any_lookup(svc: LocalService) -> None:
    good = svc.create_key("good")
    with from_address(svc, "127.0.0.2", "qk_not-a-key") as bad:
        for _ in range(AUTH_FAILURES):
            assert bad.get("/v1/jobs").status_code == 401
        refused = bad.get("/v1/jobs")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "too_many_auth_failures"
    with from_address(svc, "127.0.0.2", good) as same_address:  # refused before the key is looked at
        assert same_address.get("/v1/jobs").status_code == 429
    with Client(svc.url, good) as qc:  # another address is not
        assert qc.http.get("/v1/jobs").status_code == 200


def test_revoke_through_the_cli_is_refused_within_the_key_cache(svc: LocalService, tmp_path: Path) -> None:
    token = svc.create_key("to-revoke-cli")
    with Client(svc.url, token) as qc:
        assert qc.http.get("/v1/jobs").status_code == 200  # cached now
    env = {k: v for k, v in svc.env.items() if k.startswith("QKAN_")}
    done = cli("keys", "revoke", str(key_id(svc, "to-revoke-cli")), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "revoked" in cli("keys", "list", env=env, cwd=tmp_path).stdout
    deadline = time.monotonic() + KEY_CACHE_SECONDS + 10
    with from_address(svc, "127.0.0.3", token) as revoked:
        while (answer := revoked.get("/v1/jobs")).status_code == 200:  # the CLI is another process: the cache
            assert time.monotonic() < deadline, "the revoked key was still accepted after the key cache's lifetime"
            time.sleep(1)
        assert answer.status_code == 401 and answer.json()["error"]["message"] == "the API key was revoked"


def test_admin_route_revokes_at_once_and_a_non_admin_may_not(svc: LocalService) -> None:
    admin, other_admin, user = (svc.create_key("admin", admin=True), svc.create_key("admin-2", admin=True),
                                svc.create_key("user"))
    with Client(svc.url, admin) as qa, Client(svc.url, user) as qu:
        assert qu.http.get("/v1/jobs").status_code == 200  # cached
        forbidden = qu.http.post(f"/v1/keys/{key_id(svc, 'admin')}/revoke")
        assert forbidden.status_code == 403
        assert qa.http.post("/v1/keys/999999/revoke").status_code == 404
        done = qa.http.post(f"/v1/keys/{key_id(svc, 'user')}/revoke")
        assert done.status_code == 200 and done.json()["revoked_at"] is not None
        assert qa.http.post(f"/v1/keys/{key_id(svc, 'admin-2')}/revoke").status_code == 200  # another admin
        with from_address(svc, "127.0.0.4", user) as revoked, from_address(svc, "127.0.0.4", other_admin) as gone:
            answer = revoked.get("/v1/jobs")  # the same API process: refused at once, cache or not
            assert answer.status_code == 401 and answer.json()["error"]["message"] == "the API key was revoked"
            assert gone.get("/v1/jobs").status_code == 401
        assert qa.http.post(f"/v1/keys/{key_id(svc, 'user')}/rotate").status_code == 409


def test_rotate_gives_the_same_key_a_new_token_and_the_old_one_stops(svc: LocalService, model_file: Path,
                                                                     tmp_path: Path) -> None:
    admin, old = svc.create_key("rotating-admin", admin=True), svc.create_key("rotating")
    with Client(svc.url, old) as qc:
        model_id = qc.upload_model(model_file).id
        job_id = qc.submit(model_id, make_inputs(2, 2)).id
    with Client(svc.url, admin) as qa:
        rotated = qa.http.post(f"/v1/keys/{key_id(svc, 'rotating')}/rotate")
    assert rotated.status_code == 200
    new = rotated.json()["token"]
    assert new != old and rotated.json()["id"] == key_id(svc, "rotating")
    with from_address(svc, "127.0.0.5", old) as stale:
        assert stale.get("/v1/jobs").status_code == 401
    with Client(svc.url, new) as qc:
        assert [j.id for j in qc.jobs().items] == [job_id]
        assert qc.model(model_id).id == model_id
    env = {k: v for k, v in svc.env.items() if k.startswith("QKAN_")}
    again = cli("keys", "rotate", str(key_id(svc, "rotating")), env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    newest = again.stdout.strip()
    deadline = time.monotonic() + KEY_CACHE_SECONDS + 10
    with from_address(svc, "127.0.0.5", new) as previous:
        while previous.get("/v1/jobs").status_code == 200:  # another process rotated it: within the cache
            assert time.monotonic() < deadline, "the rotated-away token was still accepted after the key cache"
            time.sleep(1)
    with Client(svc.url, newest) as qc:
        assert [j.id for j in qc.jobs().items] == [job_id]


def test_the_active_jobs_count_reads_only_the_keys_own_active_jobs() -> None:
    """With a long history for the key and many active jobs of other keys, the count the submission makes under
    the key's row lock goes through (owner_id, state), not every key's active jobs (migration 0010)."""
    with postgres_url() as url:
        upgrade(url)
        with session_scope(url) as session:
            ours, _ = create_key(session, "ours")
            theirs, _ = create_key(session, "theirs")
            owners = {JobState.SUCCEEDED: ours.id, JobState.QUEUED: theirs.id}
        jobs = Job.__table__
        with engine_for(url).begin() as connection:
            for state, count in ((JobState.SUCCEEDED, 20_000), (JobState.QUEUED, 5_000)):
                connection.execute(insert(jobs), [
                    {"id": str(uuid.uuid4()), "owner_id": owners[state], "kind": "inference", "backend": "exact",
                     "queue": "local", "request_hash": "", "state": state, "inputs": b"", "options": {}}
                    for _ in range(count)])
            connection.exec_driver_sql("ANALYZE jobs")
            count = _COUNT_ACTIVE.params(key_id=ours.id).compile(dialect=connection.dialect,
                                                                 compile_kwargs={"literal_binds": True})
            plan = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {count}").scalar_one()
    assert "ix_jobs_owner_state" in json.dumps(plan), plan
