"""The benchmark's baseline task, kept out of the product: a bare Celery round trip.

bench/service_load.py starts the service's own worker with
``qkan-orch worker --include noop_task`` (bench/ on its PYTHONPATH), so the
noop runs in the very process, with the very settings, that runs jobs.
"""

from celery import shared_task

NAME = "bench.noop"


@shared_task(name=NAME)
def noop() -> None:
    """Does nothing: what remains is the broker and worker overhead a job is compared against."""
