"""A step's write is the same on every database: PostgreSQL in one statement, SQLite statement by statement.

``PendingWrites`` writes the job's UPDATE with its round rows, events and
result as one autocommitted statement on PostgreSQL (``step_in_one_statement``)
and as separate statements in one transaction on SQLite; both must leave the
same rows, in the same order, and neither may write anything once the lease
is gone.
"""

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from qkan_orch.service.api.job_records import new_job
from qkan_orch.service.store import jobs as store
from qkan_orch.service.store import step_in_one_statement as one_statement
from qkan_orch.service.store.database import engine_for, session_scope, upgrade
from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import ApiKey, Job, JobEvent, JobResult, Round
from qkan_orch.workers import lease
from qkan_orch.workers.pending_writes import PendingWrites
from service_env import postgres_url

SUBMITTED = datetime(2030, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with postgres_url() if request.param == "postgresql" else nullcontext(f"sqlite:///{tmp_path / 'q.db'}") as url:
        upgrade(url)
        yield url


def _claimed_job(url: str) -> tuple[str, str]:
    """A queued job of a new key, claimed: (job id, lease token)."""
    with session_scope(url) as session:
        key = ApiKey(name="t", prefix="qk_", key_hash=f"h-{datetime.now(UTC).timestamp()}")
        session.add(key)
        session.flush()
        job = new_job(key, kind="inference", model_id=None, backend="exact", shots=None, pack=None, options={},
                      arrays={"inputs": np.zeros((2, 2))}, rounds_total=2)
        session.add(job)
        session.commit()
        held = lease.claim(session, job.id, 30.0)
        assert held is not None
        return job.id, held.token


def _write_a_finished_step(session: Session, job_id: str, token: str) -> None:
    writes = PendingWrites(session, job_id, token)
    writes.event("state", state=JobState.RUNNING)
    for number in range(2):
        writes.add(shots_used=100, executions=1, cost=0.25)
        writes.round(number, rows=3, requested=4, executions=1, shots=100, provider_job_ids=[f"p{number}"],
                     submitted_at=SUBMITTED, finished_at=SUBMITTED + timedelta(seconds=number + 1),
                     seconds=0.5 * (number + 1))
        writes.event("round", round=number + 1, of=2, qubits=[number, 7])
    writes.store_result(b"arrays", {"samples": 2, "outputs": 1})
    writes.event("state", state=JobState.SUCCEEDED, samples=2)
    writes.release(state=JobState.SUCCEEDED, finished_at=SUBMITTED, in_flight=None)


def test_a_step_writes_its_rows_in_order_and_releases_the_job(url: str) -> None:
    job_id, token = _claimed_job(url)
    statements: list[str] = []
    engine = engine_for(url)

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with session_scope(url) as session:
            _write_a_finished_step(session, job_id, token)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    if url.startswith("postgresql"):  # the whole write is one statement there
        assert len(statements) == 1 and statements[0].lstrip().startswith("WITH job AS")
    else:
        assert len(statements) > 1

    with session_scope(url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert (job.state, job.lease_owner, job.lease_until) == (JobState.SUCCEEDED, None, None)
        assert (job.shots_used, job.executions, job.cost, job.finished_at) == (200, 2, 0.5, SUBMITTED)
        rounds = session.scalars(select(Round).where(Round.job_id == job_id).order_by(Round.number)).all()
        assert [(r.number, r.rows, r.requested, r.executions, r.shots, r.provider_job_ids, r.seconds)
                for r in rounds] == [(0, 3, 4, 1, 100, ["p0"], 0.5), (1, 3, 4, 1, 100, ["p1"], 1.0)]
        assert [(r.submitted_at, r.finished_at) for r in rounds] == [
            (SUBMITTED, SUBMITTED + timedelta(seconds=1)), (SUBMITTED, SUBMITTED + timedelta(seconds=2))]
        events = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
        assert [(e.kind, e.data) for e in events] == [
            ("state", {"state": "running"}), ("round", {"round": 1, "of": 2, "qubits": [0, 7]}),
            ("round", {"round": 2, "of": 2, "qubits": [1, 7]}), ("state", {"state": "succeeded", "samples": 2})]
        assert [e.at for e in events] == sorted(e.at for e in events) and events[0].at.tzinfo is not None
        result = session.get(JobResult, job_id)
        assert result is not None and (result.arrays, result.summary) == (b"arrays", {"samples": 2, "outputs": 1})


def test_a_write_after_the_lease_was_taken_over_writes_nothing(url: str) -> None:
    job_id, token = _claimed_job(url)
    with session_scope(url) as session:  # a sweeper decided the holder was gone and gave the job to another
        session.execute(update(Job).where(Job.id == job_id).values(lease_owner="another"))
        session.commit()
    with pytest.raises(store.LeaseLost), session_scope(url) as session:  # rolled back, as a step does then
        _write_a_finished_step(session, job_id, token)
    with session_scope(url) as session:
        assert session.scalars(select(Round.id).where(Round.job_id == job_id)).all() == []
        assert session.scalars(select(JobEvent.id).where(JobEvent.job_id == job_id)).all() == []
        assert session.get(JobResult, job_id) is None
        job = session.get(Job, job_id)
        assert job is not None and (job.state, job.lease_owner, job.shots_used) == (JobState.RUNNING, "another", 0)


def test_a_write_joins_the_transaction_the_step_already_holds(url: str) -> None:
    """Rows the step added through the session (a round sent to a provider) commit with the write, so the
    write cannot be a statement of its own then."""
    job_id, token = _claimed_job(url)
    with session_scope(url) as session:
        store.add_round(session, job_id, 0, rows=3, requested=3, provider_job_ids=["p0"])
        assert not one_statement.possible(session)
        PendingWrites(session, job_id, token).commit(state=JobState.WAITING_ON_PROVIDER)
        assert one_statement.possible(session) == url.startswith("postgresql")
    with session_scope(url) as session:
        assert session.scalars(select(Round.provider_job_ids).where(Round.job_id == job_id)).all() == [["p0"]]


def test_a_column_given_as_a_function_is_computed_only_if_written(url: str) -> None:
    """The plan state after each cheap local round is set as its ``to_bytes``: only the one a write carries is
    serialised, and none when the job ends (an ended job keeps no plan state)."""
    job_id, token = _claimed_job(url)
    serialised: list[str] = []

    def state(name: str) -> Callable[[], bytes]:
        def to_bytes() -> bytes:
            serialised.append(name)
            return name.encode()
        return to_bytes

    with session_scope(url) as session:
        writes = PendingWrites(session, job_id, token)
        writes.set(plan_state=state("after round 1"))
        writes.set(plan_state=state("after round 2"))
        assert serialised == []
        writes.commit()
        assert serialised == ["after round 2"]
        assert session.scalar(select(Job.plan_state).where(Job.id == job_id)) == b"after round 2"
        writes.set(plan_state=state("after round 3"))
        writes.release(state=JobState.SUCCEEDED, plan_state=None)
        assert serialised == ["after round 2"]
        assert session.scalar(select(Job.plan_state).where(Job.id == job_id)) is None
