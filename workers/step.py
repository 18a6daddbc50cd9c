"""One step of a job, what one Celery message does: claim it, run its kind's step, end it.

A step uses one database session. Errors end it by kind: a user's input or a
provider's verdict fails the job, a transient provider error retries it after
a backoff, an allocation over the worker's memory ceiling fails it with
``memory_limit``, and an unknown exception fails it loudly without taking the
worker down. A step that lost its lease stops without writing anything more.
A database that cannot be reached ends the step without a verdict on the job:
its writes already retried for a while (``PendingWrites``), so the task sends
the message again after a backoff, and whatever was not written is done again
by the step that next holds the job.
"""

import logging
import uuid

from sqlalchemy.exc import OperationalError

from qkan_orch.backends.accounts import redact
from qkan_orch.backends.base import ProviderJobFailed, TransientBackendError
from qkan_orch.models.errors import InputError
from qkan_orch.service.job_logging import job_context
from qkan_orch.service.settings import Settings
from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.database import session_factory
from qkan_orch.workers import lease, memory_ceiling
from qkan_orch.workers.claimed_job import ClaimedJob, Step
from qkan_orch.workers.inference_step import infer
from qkan_orch.workers.training_step import train

log = logging.getLogger("qkan.worker")
TRANSIENT = (TransientBackendError, ConnectionError, TimeoutError)


def advance_job(job_id: str, settings: Settings) -> Step:
    """Run one step of ``job_id`` if nobody else is; safe to call any number of times."""
    url = settings.resolved_database_url
    with job_context(job_id), session_factory(url)() as session:
        held = lease.claim(session, job_id, settings.lease_seconds)
        if held is None:
            again_in = lease.retry_after(session, job_id)
            return Step(None) if again_in is None else Step(again_in, uuid.uuid4().hex)
        with lease.kept(url, job_id, held.token, settings.lease_seconds):
            try:
                step = _run(ClaimedJob(session, held, settings))
                log.info("step done; %s", "job ended" if step.again_in is None else f"next in {step.again_in:g} s")
                return step
            except store.LeaseLost:
                session.rollback()
                log.warning("job %s: lease lost, another worker continues it", job_id)
                return Step(None)


def _run(claimed: ClaimedJob) -> Step:
    job, session = claimed.job, claimed.session
    try:
        if job.cancel_requested:
            return claimed.cancel()
        return train(claimed) if job.kind == "train" else infer(claimed)
    except InputError as exc:
        session.rollback()
        return claimed.fail("invalid_input", str(exc))
    except ProviderJobFailed as exc:
        session.rollback()
        return claimed.fail("provider_failed", redact(str(exc)))
    except TRANSIENT as exc:
        session.rollback()
        return claimed.retry(exc)
    except (store.LeaseLost, OperationalError):
        raise
    except Exception as exc:  # a bug or an SDK failure we do not know: fail loudly, keep the worker
        if memory_ceiling.reached(exc):
            memory_ceiling.release(exc)  # first: what the step allocated is still held by its frames
            session.rollback()
            log.warning("job %s reached the worker's memory ceiling", job.id)
            return claimed.fail("memory_limit", memory_ceiling.message(claimed.settings.worker_max_memory))
        session.rollback()
        log.exception("job %s failed", job.id)
        return claimed.fail("internal", redact(f"{type(exc).__name__}: {exc}"))
