"""The memory ceiling jobs run under (QKAN_WORKER_MAX_MEMORY), and how a step knows it was reached.

Each prefork pool child sets RLIMIT_DATA as it starts (``worker_process_init``;
this module is imported by the step, so the handler is connected before the
pool forks). An allocation over it fails inside that child — a ``MemoryError``
from numpy, Python or a C++ SDK, or torch's allocator ``RuntimeError`` — the
step fails the job with ``memory_limit``, and the same child takes the next job.
The worker's main process stays outside the ceiling. RLIMIT_DATA counts heap and
private writable mappings, where arrays live; RLIMIT_AS would also count address
space that thread stacks and allocator arenas reserve but never touch.
"""

import resource
import traceback

from celery.signals import worker_process_init
from pydantic import ByteSize

from qkan_orch.service.settings import get_settings


def apply(limit: int) -> None:
    """Cap this process's data segment at ``limit`` bytes (0: leave it as it is)."""
    if limit <= 0:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def reached(exc: BaseException) -> bool:
    """An allocation that failed: numpy's and Python's ``MemoryError``, or torch's CPU allocator."""
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def release(exc: BaseException) -> None:
    """Free the failed step's arrays now: the frames in the traceback hold them while the handler runs."""
    traceback.clear_frames(exc.__traceback__)


def message(limit: int) -> str:
    return (f"the job needed more memory than a worker allows (QKAN_WORKER_MAX_MEMORY = "
            f"{ByteSize(limit).human_readable()}); submit fewer inputs per job or use a smaller model")


@worker_process_init.connect
def _apply_in_pool_child(**_: object) -> None:
    apply(get_settings().worker_max_memory)
