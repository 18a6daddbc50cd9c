"""Drive an ExecutionPlan to completion on one backend, in this process.

This is the synchronous loop the CLI and benchmarks use; the Celery workers
run the same submit → poll → absorb steps, persisting state between them.
"""

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from qkan_orch.backends.base import Backend, Pack
from qkan_orch.circuits.plan import ExecutionPlan, PlanState


@dataclass
class RoundStats:
    rows: int
    requested: int
    executions: int
    shots: int
    seconds: float
    provider_job_ids: list[str] = field(default_factory=list)
    pack: int | None = None  # template copies per circuit, where the backend reports it
    qubits: list[int] | None = None  # physical qubits the copies ran on, where the backend chose them


@dataclass
class RunReport:
    outputs: np.ndarray
    stderr: np.ndarray
    state: PlanState
    rounds: list[RoundStats]
    seconds: float
    raw: tuple[np.ndarray, np.ndarray] | None = None  # outputs and stderr before mitigation, if mitigated

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.rounds)

    @property
    def requested(self) -> int:
        return sum(r.requested for r in self.rounds)

    @property
    def executions(self) -> int:
        return sum(r.executions for r in self.rounds)

    @property
    def provider_jobs(self) -> int:
        return sum(len(r.provider_job_ids) for r in self.rounds)


def run_plan(
    plan: ExecutionPlan,
    backend: Backend,
    shots: int | None = None,
    pack: Pack = None,
    options: dict[str, Any] | None = None,
    progress: bool = False,
    poll_interval: float = 0.2,
) -> RunReport:
    """Submit every round, wait for it, absorb it; return outputs and bookkeeping."""
    backend.validate(shots, pack, options)  # refuse bad settings before any work
    start = time.perf_counter()
    state = plan.initial_state()
    rounds: list[RoundStats] = []
    bar = tqdm(total=plan.total_rounds, desc=backend.name, unit="round", disable=not progress, leave=False)
    while (batch := plan.next_batch(state)) is not None:
        round_start = time.perf_counter()
        handle = backend.submit(batch, shots=shots, pack=pack, options=options)
        while (result := backend.poll(handle)) is None:
            time.sleep(poll_interval)
        state = plan.absorb(state, result)
        rounds.append(
            RoundStats(
                rows=batch.num_rows,
                requested=batch.num_requested,
                executions=result.executions,
                shots=result.shots,
                seconds=time.perf_counter() - round_start,
                provider_job_ids=list(result.provider_job_ids),
                pack=result.metadata.get("pack"),
                qubits=result.qubits,
            )
        )
        bar.update()
    bar.close()
    outputs, stderr = plan.outputs(state)
    return RunReport(outputs, stderr, state, rounds, time.perf_counter() - start, plan.raw_outputs(state))
