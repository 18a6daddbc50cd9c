"""A job this worker holds the lease of, and the ways its step ends.

Every ending writes the step's pending changes and releases the lease in one
UPDATE and one commit, then tells the task when the job needs a worker again.

The retry budget: ``QKAN_TASK_MAX_RETRIES`` transient errors in a row, with
no provider call answering in between (``recovered`` resets the count), so a
long job is not failed by hiccups spread over its lifetime; backoffs double
from ``QKAN_RETRY_BACKOFF_SECONDS``. A job that ends failed or cancelled with
a round in flight cancels that provider job first: nothing keeps running, and
billing, for a job that has ended.
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
from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import Job
from qkan_orch.workers.lease import Lease
from qkan_orch.workers.pending_writes import PendingWrites

log = logging.getLogger("qkan.worker")


@dataclass(frozen=True)
class ProviderCancel:
    """The provider jobs of the round in flight a step asked its provider to cancel; ``error`` if that failed."""

    provider_job_ids: list[str]
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        """For the job's final event: which provider jobs were cancelled, or which the cancel failed for."""
        if self.error is None:
            return {"cancelled_provider_jobs": self.provider_job_ids}
        return {"provider_cancel_failed": self.provider_job_ids, "provider_cancel_error": self.error}


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
        self.attempts = lease.job.attempts  # transient errors in a row so far
        if self.job.plan_state is None and self.job.in_flight is None:  # the job's first step
            self.writes.event("state", state=JobState.RUNNING)

    def again(self, delay: float, **values: Any) -> Step:
        """Release the job and come back after ``delay`` seconds with the message whose id the row now names."""
        task_id = uuid.uuid4().hex
        self.writes.release(task_id=task_id, **values)
        return Step(delay, task_id)

    def end(self, state: JobState, event: dict[str, Any], **values: Any) -> Step:
        """The job's last write. Nothing resumes an ended job, so it keeps no plan state: its result holds the
        outputs, layer outputs and activations the state carried."""
        self.writes.event("state", state=state, **event)
        self.writes.release(state=state, finished_at=datetime.now(UTC), in_flight=None, plan_state=None, **values)
        return Step(None)

    def succeed(self, arrays: bytes, summary: dict[str, Any], **values: Any) -> Step:
        self.writes.store_result(arrays, summary)
        return self.end(JobState.SUCCEEDED, summary, **values)

    def fail(self, code: str, message: str) -> Step:
        """End the job failed, cancelling a round in flight at its provider — unless the provider failed it."""
        event: dict[str, Any] = {"code": code, "message": message}
        if code != "provider_failed" and (cancel := self._cancel_in_flight()) is not None:
            event.update(cancel.summary())
        return self.end(JobState.FAILED, event, error_code=code, error_message=message)

    def recovered(self) -> None:
        """A provider call answered: the transient errors before it no longer count against the retry budget."""
        if self.attempts:
            self.attempts = 0
            self.writes.set(attempts=0, error_message=None)

    def retry(self, exc: Exception) -> Step:
        """Come back after an exponential backoff, or fail once the retries in a row are used up."""
        attempts = self.attempts + 1
        if attempts > self.settings.task_max_retries:
            return self.fail("provider_error", redact(f"gave up after {attempts - 1} retries: {exc}"))
        delay = self.settings.retry_backoff_seconds * 2 ** (attempts - 1)
        message = redact(str(exc))
        self.writes.event("retry", attempt=attempts, delay=delay, message=message)
        return self.again(delay, attempts=attempts, error_message=f"retrying: {message}")

    def cancel(self) -> Step:
        """End the job cancelled, with the provider job of a round in flight."""
        cancel = self._cancel_in_flight()
        return self.end(JobState.CANCELLED, cancel.summary() if cancel else {})

    def _cancel_in_flight(self) -> ProviderCancel | None:
        """Cancel the provider job of a round in flight (read afresh: it may have been submitted this step);
        None if there is none. A failed cancel is logged and reported: the job ends either way, and the
        provider may have finished the job meanwhile."""
        in_flight = self.session.scalar(select(Job.in_flight).where(Job.id == self.job.id))
        if not in_flight:
            return None
        handle = Handle.from_json(in_flight["handle"])
        try:
            get_backend(handle.backend).cancel(handle)
        except Exception as exc:
            log.exception("job %s: provider cancel failed", self.job.id)
            return ProviderCancel(handle.provider_job_ids, redact(f"{type(exc).__name__}: {exc}"))
        log.info("job %s: cancelled provider job(s) %s", self.job.id, ", ".join(handle.provider_job_ids))
        return ProviderCancel(handle.provider_job_ids)
