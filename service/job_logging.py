"""Worker and API logs: third-party loggers at WARNING, ours at ``QKAN_LOG_LEVEL``, the job id on every line.

Qiskit's transpiler alone logs a line per pass at INFO, drowning what the
worker itself says; Celery's loggers stay at our level (its task lines are
how an operator follows the queues). The job id travels in a context
variable that ``job_context`` sets while a step runs (or the API creates or
cancels a job), so every module's line carries it without passing it around.
In the API, uvicorn keeps its own handlers (its access log is the request
log); ours get one handler with this format, and other libraries stay at
Python's last-resort WARNING.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

OURS = ("qkan", "celery")
FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] %(name)s%(job)s: %(message)s"
_current_job: ContextVar[str | None] = ContextVar("qkan_job", default=None)


class JobIdFilter(logging.Filter):
    """Gives every record a ``job`` field: `` job=<id>`` while a step runs, empty otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = _current_job.get()
        record.job = f" job={job}" if job else ""
        return True


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Every line logged inside names ``job_id``."""
    token = _current_job.set(job_id)
    try:
        yield
    finally:
        _current_job.reset(token)


def configure_api(level: str) -> None:
    """The API process: the ``qkan`` loggers on one stderr handler with the job id; once per process."""
    ours = logging.getLogger("qkan")
    if any(isinstance(f, JobIdFilter) for h in ours.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.addFilter(JobIdFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    ours.addHandler(handler)
    ours.setLevel(level.upper())  # still propagating: uvicorn puts no handler on the root


def configure(root: logging.Logger, level: str) -> None:
    """After Celery set ``root`` up at ``level``: the root (everyone else's) at WARNING, ours at ``level``."""
    for name in OURS:
        logging.getLogger(name).setLevel(level.upper())
    root.setLevel(logging.WARNING)
    for handler in root.handlers:
        handler.addFilter(JobIdFilter())
        handler.setFormatter(logging.Formatter(FORMAT))
