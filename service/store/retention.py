"""Retention: finished jobs older than a cutoff are deleted with their rounds, events and results.

Invariants:

* Only a job in a terminal state whose ``finished_at`` is before the cutoff is deleted, whatever an active job's
  age: every DELETE (the children's and the job's) carries that condition itself, not a list read earlier. A job
  never leaves a terminal state (``states``) and its ``finished_at`` is written once, so all statements of a
  batch match the same jobs, and a job that is active when a statement runs matches none of them.
* A job's rows go in dependency order (rounds, events, results, then the job) in one transaction, so no job is
  left half deleted; the schema's ON DELETE CASCADE on those three tables would do the same, the explicit
  deletes count the rows per table.
* Work goes in batches of at most ``batch`` jobs, one transaction each, so a big prune never holds its locks
  long. Two prunes at once are harmless: each deletes what the other has not.
* What a job counted against its key's budgets outlives it: the batch's jobs are locked (FOR UPDATE) and their
  estimates carried over to their keys (``budget_usage.carry_over``) in the transaction that deletes them, so
  a concurrent prune waits and then finds them gone, and counts none of them twice.
* A comparison goes once no job refers to it any more and it is older than the cutoff (its jobs were created
  after it, so one whose jobs were all pruned always is; a comparison being created now never is). Models,
  keys and calibration snapshots are kept.
"""

from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, delete, exists, func, not_, select
from sqlalchemy.orm import Session

from qkan_orch.service.store.budget_usage import carry_over
from qkan_orch.service.store.states import TERMINAL
from qkan_orch.service.store.tables import Comparison, Job, JobEvent, JobResult, Round

BATCH = 500
CHILDREN = (("rounds", Round), ("job_events", JobEvent), ("results", JobResult))  # every table referring to jobs
UNSYNCED = {"synchronize_session": False}  # the database decides; the session holds no copies of these rows


@dataclass
class PruneReport:
    """Rows deleted (or, for a dry run, that would be) per table."""

    jobs: int = 0
    rounds: int = 0
    job_events: int = 0
    results: int = 0
    comparisons: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def __str__(self) -> str:
        return ", ".join(f"{getattr(self, f.name)} {f.name}" for f in fields(self))


def _prunable(cutoff: datetime) -> ColumnElement[bool]:
    """The condition every delete carries: terminal, and finished before the cutoff (never NULL, so its
    negation is exact: ``_orphaned``)."""
    return Job.state.in_(TERMINAL) & Job.finished_at.is_not(None) & (Job.finished_at < cutoff)


def _orphaned(cutoff: datetime, going: ColumnElement[bool] | None = None) -> ColumnElement[bool]:
    """Comparisons older than the cutoff none of whose jobs remain (or would, once the jobs ``going`` are gone)."""
    remaining = exists().where(Job.comparison_id == Comparison.id)
    if going is not None:
        remaining = remaining.where(not_(going))
    return (Comparison.created_at < cutoff) & not_(remaining)


def prune(session: Session, older_than: timedelta, now: datetime | None = None, batch: int = BATCH,
          dry_run: bool = False) -> PruneReport:
    """Delete jobs that finished more than ``older_than`` before ``now`` with all their rows, and comparisons
    left without jobs; commits after every batch. ``dry_run`` counts what would go and changes nothing."""
    cutoff = (now or datetime.now(UTC)) - older_than
    report = PruneReport()
    if dry_run:
        jobs = select(Job.id).where(_prunable(cutoff))
        report.jobs = session.scalar(select(func.count()).select_from(jobs.subquery())) or 0
        for name, table in CHILDREN:
            count = select(func.count()).select_from(table).where(table.job_id.in_(jobs))
            setattr(report, name, session.scalar(count) or 0)
        count = select(func.count()).select_from(Comparison).where(_orphaned(cutoff, _prunable(cutoff)))
        report.comparisons = session.scalar(count) or 0
        return report
    while ids := session.scalars(select(Job.id).where(_prunable(cutoff)).order_by(Job.finished_at).limit(batch)).all():
        doomed = select(Job.id).where(Job.id.in_(ids), _prunable(cutoff))
        carry_over(session, session.scalars(doomed.with_for_update()).all())
        for name, table in CHILDREN:
            rows = session.execute(delete(table).where(table.job_id.in_(doomed)), execution_options=UNSYNCED).rowcount
            setattr(report, name, getattr(report, name) + rows)
        report.jobs += session.execute(delete(Job).where(Job.id.in_(ids), _prunable(cutoff)),
                                       execution_options=UNSYNCED).rowcount
        session.commit()
    while ids := session.scalars(select(Comparison.id).where(_orphaned(cutoff)).limit(batch)).all():
        gone = delete(Comparison).where(Comparison.id.in_(ids), _orphaned(cutoff))
        report.comparisons += session.execute(gone, execution_options=UNSYNCED).rowcount
        session.commit()
    return report
