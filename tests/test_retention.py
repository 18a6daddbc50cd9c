"""Retention (issue 15): ``store.retention.prune``, ``qkan-orch prune`` and the workers' hourly prune.

On SQLite and a fresh PostgreSQL database, schema by the project's migrations, rows inserted directly: old
finished jobs of every terminal state go with their rounds, events and results; active jobs stay whatever their
age, recent finished ones stay, models and keys stay; a comparison goes once all its jobs are gone. Pruning
many old jobs (more than one batch) brings every table back to its row count before they were added: the
unit-level form of "the database does not grow under a soak".
"""

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import event, func, insert, select, update

from qkan_orch.service.store.budget_usage import committed
from qkan_orch.service.store.database import engine_for, session_scope, upgrade
from qkan_orch.service.store.keys import create_key
from qkan_orch.service.store.retention import PruneReport, prune
from qkan_orch.service.store.states import ACTIVE, TERMINAL, JobState
from qkan_orch.service.store.tables import ApiKey, Comparison, Job, JobEvent, JobResult, Round, StoredModel
from qkan_orch.workers.sweeper import PRUNE_EVERY, PRUNE_LOCK, broker_lock, prune_if_due
from service_env import postgres_url, system_redis_url
from support.cli_process import cli

TABLES = {"jobs": Job, "rounds": Round, "job_events": JobEvent, "results": JobResult, "comparisons": Comparison,
          "models": StoredModel, "api_keys": ApiKey}
NOW = datetime.now(UTC)
OLD, RECENT = NOW - timedelta(days=40), NOW - timedelta(days=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'qkan.db'}"
        upgrade(url)
        yield url
    else:
        with postgres_url() as url:
            upgrade(url)
            yield url


def counts(url: str) -> dict[str, int]:
    with session_scope(url) as session:
        return {name: session.scalar(select(func.count()).select_from(table)) or 0 for name, table in TABLES.items()}


def job_rows(owner: int, model: str | None, state: str, finished: datetime | None,
             comparison: str | None = None) -> tuple[dict, list[dict], list[dict], list[dict]]:
    """A job (created 41 days ago) with two rounds, two events and, once terminal, a result."""
    job_id = str(uuid.uuid4())
    job = {"id": job_id, "owner_id": owner, "kind": "inference", "model_id": model, "backend": "exact",
           "queue": "local", "request_hash": "0" * 64, "state": state, "inputs": b"in", "options": {},
           "created_at": OLD - timedelta(days=1), "updated_at": OLD, "finished_at": finished,
           "comparison_id": comparison}
    rounds = [{"job_id": job_id, "number": n, "provider_job_ids": []} for n in range(2)]
    events = [{"job_id": job_id, "kind": kind, "data": {}} for kind in ("submitted", "round")]
    results = [{"job_id": job_id, "arrays": b"out", "summary": {}}] if state in TERMINAL else []
    return job, rounds, events, results


def add_jobs(url: str, specs: list[tuple]) -> list[str]:
    """Jobs (owner, model, state, finished_at[, comparison]) with their rows, in one statement per table."""
    built = [job_rows(*spec) for spec in specs]
    with session_scope(url) as session:
        session.execute(insert(Job), [b[0] for b in built])
        for n, table in ((1, Round), (2, JobEvent), (3, JobResult)):
            if rows := [row for b in built for row in b[n]]:
                session.execute(insert(table), rows)
    return [b[0]["id"] for b in built]


def owner_and_model(url: str) -> tuple[int, str]:
    with session_scope(url) as session:
        key, _ = create_key(session, "retention")
        model = StoredModel(id=str(uuid.uuid4()), owner_id=key.id, name="m", spec={}, parameter_count=1,
                            content_hash="0" * 64, blob=b"w", source="upload")
        session.add(model)
        return key.id, model.id


def comparison(url: str, owner: int) -> str:
    with session_scope(url) as session:
        row = Comparison(id=str(uuid.uuid4()), owner_id=owner, reference="exact", backends=["exact"], settings={},
                         created_at=OLD - timedelta(days=2))
        session.add(row)
        return row.id


def scenario(url: str) -> tuple[list[str], list[str], str, str]:
    """(ids that must go, ids that must stay, comparison that goes, comparison that stays)."""
    owner, model = owner_and_model(url)
    emptied, kept = comparison(url, owner), comparison(url, owner)
    going = add_jobs(url, [(owner, model, state, OLD) for state in TERMINAL]
                     + [(owner, model, JobState.SUCCEEDED, OLD, emptied)] * 2
                     + [(owner, model, JobState.FAILED, OLD, kept)])
    staying = add_jobs(url, [(owner, model, state, None) for state in ACTIVE]
                       + [(owner, model, JobState.RUNNING, OLD)]  # active, whatever its finished_at says
                       + [(owner, model, state, RECENT) for state in TERMINAL]
                       + [(owner, model, JobState.SUCCEEDED, RECENT, kept)])
    return going, staying, emptied, kept


def present(url: str, table: type, ids: list[str]) -> set[str]:
    with session_scope(url) as session:
        return set(session.scalars(select(table.id).where(table.id.in_(ids))))


def test_old_finished_jobs_go_with_their_rows_active_and_recent_ones_stay(database: str) -> None:
    going, staying, emptied, kept = scenario(database)
    before = counts(database)
    with session_scope(database) as session:
        planned = prune(session, timedelta(days=30), dry_run=True)
    assert counts(database) == before  # a dry run deletes nothing
    with session_scope(database) as session:
        report = prune(session, timedelta(days=30))
    assert report == planned == PruneReport(jobs=6, rounds=12, job_events=12, results=6, comparisons=1)
    assert present(database, Job, going) == set() and present(database, Job, staying) == set(staying)
    assert present(database, Comparison, [emptied, kept]) == {kept}
    after = counts(database)
    assert after == {**before, "jobs": before["jobs"] - 6, "rounds": before["rounds"] - 12,
                     "job_events": before["job_events"] - 12, "results": before["results"] - 6,
                     "comparisons": before["comparisons"] - 1}
    assert after["models"] == after["api_keys"] == 1
    with session_scope(database) as session:  # every remaining round, event and result still has its job
        for table in (Round, JobEvent, JobResult):
            assert set(session.scalars(select(table.job_id).distinct())) <= set(staying)
        assert prune(session, timedelta(days=30)) == PruneReport()  # nothing left to go


def test_many_old_jobs_are_pruned_in_batches_back_to_the_baseline(database: str) -> None:
    owner, model = owner_and_model(database)
    add_jobs(database, [(owner, model, JobState.RUNNING, None), (owner, model, JobState.SUCCEEDED, RECENT)])
    baseline = counts(database)
    n = 1100
    add_jobs(database, [(owner, model, TERMINAL[k % 3], OLD - timedelta(minutes=k)) for k in range(n)])
    assert counts(database)["jobs"] == baseline["jobs"] + n
    commits: list[int] = []
    listener = lambda _conn: commits.append(1)  # noqa: E731
    event.listen(engine_for(database), "commit", listener)
    try:
        with session_scope(database) as session:
            report = prune(session, timedelta(days=30))
    finally:
        event.remove(engine_for(database), "commit", listener)
    assert report.jobs == n and report.rounds == report.job_events == 2 * n and report.results == n
    assert len(commits) >= 3  # 1100 jobs in batches of 500: a transaction each
    assert counts(database) == baseline


def estimated(url: str, ids: list[str], shots: int, cost: float, executions: int) -> None:
    with session_scope(url) as session:
        session.execute(update(Job).where(Job.id.in_(ids)).values(
            estimate={"shots": shots, "cost": cost}, executions=executions))


def spent(url: str, *owners: int) -> list[tuple[int, float]]:
    with session_scope(url) as session:
        return [committed(session, owner) for owner in owners]


def test_what_pruned_jobs_spent_still_counts_against_their_keys_budgets(database: str) -> None:
    owner, model = owner_and_model(database)
    other, _ = owner_and_model(database)
    ran = add_jobs(database, [(owner, model, JobState.SUCCEEDED, OLD)] * 3 + [(owner, model, JobState.CANCELLED, OLD)]
                   + [(owner, model, JobState.SUCCEEDED, RECENT), (owner, model, JobState.RUNNING, None)])
    unused = add_jobs(database, [(owner, model, JobState.FAILED, OLD)])  # ended before running a circuit
    others = add_jobs(database, [(other, None, JobState.SUCCEEDED, OLD)])
    estimated(database, ran, shots=1000, cost=2.5, executions=4)
    estimated(database, unused, shots=10**6, cost=900.0, executions=0)
    estimated(database, others, shots=7, cost=0.25, executions=1)
    before = spent(database, owner, other)
    assert before == [(6000, 15.0), (7, 0.25)]
    with session_scope(database) as session:
        assert prune(session, timedelta(days=30)).jobs == 6
    assert spent(database, owner, other) == before
    with session_scope(database) as session:  # the four old jobs that ran, carried over; the unused one never counted
        pruned = session.execute(select(ApiKey.pruned_shots, ApiKey.pruned_cost).where(ApiKey.id == owner)).one()
        assert tuple(pruned) == (4000, 10.0)


def test_two_prunes_at_once_carry_each_job_over_once() -> None:
    with postgres_url() as url:
        upgrade(url)
        owner, model = owner_and_model(url)
        ids = add_jobs(url, [(owner, model, JobState.SUCCEEDED, OLD - timedelta(minutes=k)) for k in range(300)])
        estimated(url, ids, shots=10, cost=0.5, executions=1)
        before = spent(url, owner)

        def prune_in_small_batches() -> PruneReport:
            with session_scope(url) as session:
                return prune(session, timedelta(days=30), batch=20)

        with ThreadPoolExecutor(2) as pool:
            reports = list(pool.map(lambda _: prune_in_small_batches(), range(2)))
        assert sum(r.jobs for r in reports) == 300
        assert spent(url, owner) == before == [(3000, 150.0)]


def test_the_cli_prunes_the_database_directly_and_dry_run_changes_nothing(database: str, tmp_path: Path) -> None:
    going, staying, _, _ = scenario(database)
    env = {"QKAN_DATABASE_URL": database, "QKAN_DATA_DIR": str(tmp_path)}
    before = counts(database)
    dry = cli("prune", "--older-than", "30d", "--dry-run", env=env, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == "would delete: 6 jobs, 12 rounds, 12 job_events, 6 results, 1 comparisons"
    assert counts(database) == before
    done = cli("prune", "--older-than", "720h", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "deleted: 6 jobs, 12 rounds, 12 job_events, 6 results, 1 comparisons"
    assert present(database, Job, going + staying) == set(staying)


def test_a_bad_age_is_a_one_line_error_naming_older_than(tmp_path: Path) -> None:
    bad = cli("prune", "--older-than", "30 days", env={"QKAN_DATA_DIR": str(tmp_path)}, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "older-than" in bad.stderr, bad.stderr


def test_the_workers_prune_at_most_once_an_hour_under_the_broker_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'qkan.db'}"
    upgrade(url)
    owner, model = owner_and_model(url)
    with system_redis_url() as redis_url:
        acquire = broker_lock(redis_url)
        add_jobs(url, [(owner, model, JobState.SUCCEEDED, OLD)])
        assert prune_if_due(url, 0, acquire) is None  # retention off: no lock taken, nothing deleted
        with redis.Redis.from_url(redis_url) as client:
            assert not client.exists(PRUNE_LOCK)
            first = prune_if_due(url, 30, acquire)
            assert first is not None and first.jobs == 1
            assert PRUNE_EVERY - 5 <= client.ttl(PRUNE_LOCK) <= PRUNE_EVERY
            add_jobs(url, [(owner, model, JobState.FAILED, OLD)])
            assert prune_if_due(url, 30, acquire) is None  # another worker, within the hour: skips
            assert prune_if_due(url, 30, broker_lock(redis_url)) is None
            assert counts(url)["jobs"] == 1
            client.delete(PRUNE_LOCK)  # the hour is over
        again = prune_if_due(url, 30, acquire)
        assert again is not None and again.jobs == 1 and counts(url)["jobs"] == 0
