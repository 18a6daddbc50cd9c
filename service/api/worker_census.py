"""Which Celery workers are alive, what they serve and how busy they are.

A Celery ``inspect`` broadcast waits its whole timeout for replies, and four
are needed (pool size, active and reserved tasks, queues): they are sent at
once. The dashboard reads this in the background (``BackgroundReading``).
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery

from qkan_orch.service.api.schemas import WorkerOut

_QUESTIONS = ("stats", "active", "reserved", "active_queues")


def inspect_workers(broker: Celery, timeout: float = 1.0) -> list[WorkerOut]:
    """Ask every worker now: the four broadcasts at once, each on its own connection, so about ``timeout``."""
    def ask(question: str) -> dict[str, Any]:
        return getattr(broker.control.inspect(timeout=timeout), question)() or {}

    with ThreadPoolExecutor(len(_QUESTIONS)) as pool:
        stats, active, reserved, queues = pool.map(ask, _QUESTIONS)
    names = sorted(set(stats) | set(active) | set(reserved) | set(queues))
    return [
        WorkerOut(name=n, queues=[q["name"] for q in queues.get(n, [])], active=len(active.get(n, [])),
                  reserved=len(reserved.get(n, [])), concurrency=stats.get(n, {}).get("pool", {}).get(
                      "max-concurrency"))
        for n in names
    ]
