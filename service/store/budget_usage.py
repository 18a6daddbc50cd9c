"""What a key has spent of its budgets: its jobs' estimates, and what its pruned jobs had counted.

A job counts with its estimate (an upper bound computed before submission);
a job that ended without running a circuit gives its share back. Retention
deletes old finished jobs, not what they spent: before a batch of jobs goes,
``carry_over`` adds what they counted to their keys' ``pruned_shots`` and
``pruned_cost``, in the prune's transaction, with the jobs' rows locked, so
two prunes at once count each job once and a budget stays a lifetime budget.
"""

from collections.abc import Sequence

from sqlalchemy import ColumnElement, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from qkan_orch.service.store.keys import KEYS
from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import ApiKey, Job

ENDED_UNUSED = (JobState.FAILED, JobState.CANCELLED)
_SHOTS, _COST = func.sum(Job.estimate["shots"].as_integer()), func.sum(Job.estimate["cost"].as_float())


# the jobs whose estimates count: all with one, except those that ended without running a circuit
_COUNTED: ColumnElement[bool] = Job.estimate.is_not(None) & or_(Job.state.not_in(ENDED_UNUSED), Job.executions > 0)


def committed(session: Session, key_id: int) -> tuple[int, float]:
    """Shots and USD the key's jobs may use or used, pruned ones included (summed in SQL). Locks the key's row
    until the transaction ends, first: the sum then sees every job a submission that held the lock before
    committed, and no prune moves jobs into the key's totals in between."""
    pruned_shots, pruned_cost = session.execute(
        select(ApiKey.pruned_shots, ApiKey.pruned_cost).where(ApiKey.id == key_id).with_for_update()).one()
    shots, cost = session.execute(select(_SHOTS, _COST).where(Job.owner_id == key_id, _COUNTED)).one()
    return int(shots or 0) + pruned_shots, float(cost or 0.0) + pruned_cost


def carry_over(session: Session, job_ids: Sequence[str]) -> None:
    """Add what these jobs counted to their keys' pruned totals; call with the jobs' rows locked, in the
    transaction that deletes them."""
    sums = session.execute(select(Job.owner_id, _SHOTS, _COST).where(Job.id.in_(job_ids), _COUNTED)
                           .group_by(Job.owner_id)).all()
    if sums:  # Core, one statement for every key: the session holds no copy of these rows to keep in step
        session.connection().execute(
            update(KEYS).where(KEYS.c.id == bindparam("owner"))
            .values(pruned_shots=KEYS.c.pruned_shots + bindparam("shots"),
                    pruned_cost=KEYS.c.pruned_cost + bindparam("cost")),
            [{"owner": owner, "shots": int(shots or 0), "cost": float(cost or 0.0)} for owner, shots, cost in sums],
        )
