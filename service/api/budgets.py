"""Budgets per API key: caps on shots and on estimated cost, over all of the key's jobs (pruned ones too).

What counts is ``store.budget_usage``'s. The key's row is locked while a
submission checks it, so two concurrent submissions cannot both spend the
last of a budget.
"""

from sqlalchemy.orm import Session

from qkan_orch.backends.base import Estimate
from qkan_orch.service.api.errors import HTTPProblem
from qkan_orch.service.store.budget_usage import committed
from qkan_orch.service.store.tables import ApiKey


def check_budget(session: Session, key: ApiKey, estimate: Estimate) -> None:
    """Refuse, with the estimate in the message, a job that would take the key over a cap."""
    if key.max_shots is None and key.max_cost is None:
        return
    shots, cost = committed(session, key.id)  # locks the key's row until the submission's insert commits
    if key.max_shots is not None and shots + estimate.shots > key.max_shots:
        raise HTTPProblem(
            402, "budget_exceeded",
            f"this job needs up to {estimate.shots:,} shots ({estimate.executions:,} circuit executions); "
            f"the key has {max(0, key.max_shots - shots):,} of its {key.max_shots:,} left", "shots")
    if key.max_cost is not None and cost + estimate.cost > key.max_cost:
        raise HTTPProblem(
            402, "budget_exceeded",
            f"this job is estimated at up to ${estimate.cost:,.2f} ({estimate.tasks} tasks, {estimate.shots:,} shots); "
            f"the key has ${max(0.0, key.max_cost - cost):,.2f} of its ${key.max_cost:,.2f} left", "budget")


