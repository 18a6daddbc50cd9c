"""The states a job goes through: one enum for the store, the workers, the API and the client.

    queued ──claim──▶ running ◀──poll──▶ waiting_on_provider
       │                 │                      │
       └─────────────────┴──────────────────────┴──▶ succeeded | failed | cancelled

A job is *active* until it reaches one of the three terminal states, and never
leaves a terminal state. The values are the strings stored in ``jobs.state``
and sent over the wire, so this module imports nothing (the client uses it).
"""

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING_ON_PROVIDER = "waiting_on_provider"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


ACTIVE = (JobState.QUEUED, JobState.RUNNING, JobState.WAITING_ON_PROVIDER)
TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
