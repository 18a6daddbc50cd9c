"""What a step has done but not yet written: job columns, counter increments, round rows and events.

A local round cheaper than its own transaction is not written at once; its
changes wait here and go out with the step's next conditional UPDATE (or are
recomputed after a crash). Everything here is a plain Python value: counters
are kept as increments and become ``Job.shots_used + n`` only in the UPDATE,
so they add to what the row holds, whoever wrote it last.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.tables import Job


class PendingWrites:
    """The one owner of a step's unwritten changes to its job; each write is one conditional UPDATE and one commit."""

    def __init__(self, session: Session, job_id: str, token: str) -> None:
        self.session, self.job_id, self.token = session, job_id, token
        self.columns: dict[str, Any] = {}
        self.increments: dict[str, int | float] = {}
        self.rounds: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []

    def set(self, **columns: Any) -> None:
        """Job columns to set (the latest value wins)."""
        self.columns.update(columns)

    def add(self, **amounts: int | float) -> None:
        """Amounts to add to counter columns (shots_used, executions, qpu_seconds, cost)."""
        for name, amount in amounts.items():
            if amount:
                self.increments[name] = self.increments.get(name, 0) + amount

    def round(self, number: int, **values: Any) -> None:
        """The row of a finished round that never went to a provider (so it has no row yet)."""
        self.rounds.append({"job_id": self.job_id, "number": number, **values})

    def event(self, kind: str, **data: Any) -> None:
        self.events.append({"job_id": self.job_id, "kind": kind, "at": datetime.now(UTC), "data": data})

    def commit_log(self) -> None:
        """Commit the pending round rows and events alone: progress the event stream should show now."""
        self._insert_log()
        self.session.commit()

    def commit(self, **values: Any) -> bool:
        """Write everything pending and ``values``; returns the job's cancel flag. LeaseLost if the lease is gone."""
        cancelled = store.change(self.session, self.job_id, self.token, **self._take(values))
        self.session.commit()
        return cancelled

    def release(self, **values: Any) -> None:
        """Write everything pending and ``values`` and give the lease up, in the same UPDATE."""
        store.release(self.session, self.job_id, self.token, **self._take(values))
        self.session.commit()

    def _take(self, values: dict[str, Any]) -> dict[str, Any]:
        """Queue the log rows; return the column values of the UPDATE, increments as SQL, and forget them."""
        self._insert_log()
        sums = {name: getattr(Job, name) + amount for name, amount in self.increments.items()}
        columns = {**self.columns, **sums, **values}
        self.columns, self.increments = {}, {}
        return columns

    def _insert_log(self) -> None:
        store.add_rounds(self.session, self.rounds)
        store.add_events(self.session, self.events)
        self.rounds, self.events = [], []
