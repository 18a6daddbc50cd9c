"""A job this worker holds the lease of, and the ways its step ends.

Every ending writes the step's pending changes and releases the lease in one
UPDATE and one commit, then tells the task when the job needs a worker again.
"""

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from qkan_orch.backends import Handle, get_backend
from qkan_orch.backends.accounts import redact
from qkan_orch.service.settings import Settings
from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import Job
from qkan_orch.workers.lease import Lease
from qkan_orch.workers.pending_writes import PendingWrites

log = logging.getLogger("qkan.worker")


@dataclass(frozen=True)
class Step:
    """``again_in``: seconds until the job needs a worker again (None: never); ``task_id`` of that message."""

    again_in: float | None
    task_id: str | None = None


class ClaimedJob:
    """The job row as claimed, the step's session and settings, and the writes it owes the database."""

    def __init__(self, session: Session, lease: Lease, settings: Settings) -> None:
        self.session, self.job, self.settings = session, lease.job, settings
        self.writes = PendingWrites(session, lease.job.id, lease.token)
        if self.job.plan_state is None and self.job.in_flight is None:  # the job's first step
            self.writes.event("state", state=JobState.RUNNING)

    def again(self, delay: float, **values: Any) -> Step:
        """Release the job and come back after ``delay`` seconds with the message whose id the row now names."""
        task_id = uuid.uuid4().hex
        self.writes.release(task_id=task_id, **values)
        return Step(delay, task_id)

    def end(self, state: JobState, event: dict[str, Any], **values: Any) -> Step:
        self.writes.event("state", state=state, **event)
        self.writes.release(state=state, finished_at=datetime.now(UTC), in_flight=None, **values)
        return Step(None)

    def succeed(self, arrays: bytes, summary: dict[str, Any], **values: Any) -> Step:
        store.store_result(self.session, self.job.id, arrays, summary)
        return self.end(JobState.SUCCEEDED, summary, **values)

    def fail(self, code: str, message: str) -> Step:
        return self.end(JobState.FAILED, {"code": code, "message": message}, error_code=code, error_message=message)

    def retry(self, exc: Exception) -> Step:
        """Come back after an exponential backoff, or fail once the retries are used up."""
        attempts = self.job.attempts + 1
        if attempts > self.settings.task_max_retries:
            return self.fail("provider_error", redact(f"gave up after {attempts - 1} retries: {exc}"))
        delay = self.settings.retry_backoff_seconds * 2 ** (attempts - 1)
        message = redact(str(exc))
        self.writes.event("retry", attempt=attempts, delay=delay, message=message)
        return self.again(delay, attempts=attempts, error_message=f"retrying: {message}")

    def cancel(self) -> Step:
        """Cancel the provider job of a round in flight (read afresh: it may have been submitted this step)."""
        in_flight = self.session.scalar(select(Job.in_flight).where(Job.id == self.job.id))
        if in_flight:
            handle = Handle.from_json(in_flight["handle"])
            try:
                get_backend(handle.backend).cancel(handle)
            except Exception:  # the job ends cancelled either way; the provider may have finished it
                log.exception("job %s: provider cancel failed", self.job.id)
        return self.end(JobState.CANCELLED, {})
