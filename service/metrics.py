"""Prometheus metrics, read from the database and the broker at scrape time.

The workers are separate processes, so counters kept in the API's memory
would miss their work; the database already holds every job and round, so
each scrape aggregates it (cheap at the scale of one service's history).
"""

import logging
from collections import defaultdict
from collections.abc import Iterator

import numpy as np
from celery import Celery
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import case, func, select

from qkan_orch.service.broker import queue_depths
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import Job, Round

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0)


class ServiceCollector(Collector):
    def __init__(self, settings: Settings, broker: Celery) -> None:
        self.url, self.broker = settings.resolved_database_url, broker

    def collect(self) -> Iterator[Metric]:
        with session_scope(self.url) as session:
            by_state = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            shots, executions = session.execute(
                select(func.coalesce(func.sum(Job.shots_used), 0), func.coalesce(func.sum(Job.executions), 0))
            ).one()
            rounds = session.execute(select(Job.backend, *[
                func.coalesce(func.sum(case((Round.seconds <= b, 1), else_=0)), 0) for b in LATENCY_BUCKETS
            ], func.count(Round.seconds), func.coalesce(func.sum(Round.seconds), 0.0)).join(Job, Job.id == Round.job_id)
                .group_by(Job.backend)).all()
            started = session.execute(select(Job.backend, Job.created_at, Job.started_at)
                                      .where(Job.started_at.is_not(None))).all()
        jobs = GaugeMetricFamily("qkan_jobs", "Jobs by state", labels=["state"])
        for state in JobState:
            jobs.add_metric([state], by_state.get(state, 0))
        yield jobs
        depth = GaugeMetricFamily("qkan_queue_depth", "Messages waiting per queue", labels=["queue"])
        try:
            for name, value in queue_depths(self.broker).items():
                depth.add_metric([name], value)
        except Exception:  # an unreachable broker shows up in /readyz; metrics still serve the rest
            log.debug("queue depths unavailable", exc_info=True)  # said, not swallowed silently
        yield depth
        yield CounterMetricFamily("qkan_shots", "Shots executed (circuit executions × shots)", value=shots)
        yield CounterMetricFamily("qkan_circuit_executions", "Circuit executions", value=executions)
        latency = HistogramMetricFamily(
            "qkan_round_latency_seconds", "Submit-to-absorb time of a quantum round, per backend (on ibm: and "
            "braket: hardware, the wait on the provider)", labels=["backend"])
        for backend, *cumulative, count, total in rounds:
            latency.add_metric([backend], _buckets(cumulative, count), sum_value=total)
        yield latency
        waits: defaultdict[str, list[float]] = defaultdict(list)
        for backend, created, began in started:
            waits[backend].append((began - created).total_seconds())
        queued = HistogramMetricFamily("qkan_job_queue_wait_seconds", "Time from submission to a worker's first "
                                       "step, per backend", labels=["backend"])
        for backend, values in sorted(waits.items()):
            counts = np.searchsorted(np.sort(values), LATENCY_BUCKETS, side="right")
            queued.add_metric([backend], _buckets(counts.tolist(), len(values)), sum_value=float(np.sum(values)))
        yield queued


def _buckets(cumulative: list[int], count: int) -> list[tuple[str, float]]:
    return [(str(b), c) for b, c in zip(LATENCY_BUCKETS, cumulative, strict=True)] + [("+Inf", count)]


def registry_for(settings: Settings, broker: Celery) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(settings, broker))
    return registry
