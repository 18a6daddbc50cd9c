"""Inference rounds of a claimed job: poll the round in flight or submit the next, absorb, persist.

A step never waits for a provider: a pending round means "again in
poll_interval seconds". A submit or poll that answers ends a run of transient
errors (``ClaimedJob.recovered``): the retry budget counts errors in a row.
Local rounds finish inside ``submit`` and are absorbed at once; the step
keeps running rounds until its time slice is used, then yields so other jobs
get a turn. A finished round is written — plan state,
round row, event, in one transaction — before anything else happens, except a
local round cheaper than ``PERSIST_AFTER`` seconds: redoing it costs less than
the transaction, so it goes out with the step's next write.

A local round runs in chunks of rows (``backends.chunked_rounds``). One that
will outlast the time slice commits a ``progress`` event after every chunk —
that UPDATE also returns the cancel flag, so a cancel stops the round within
one chunk and only the chunks that ran count as shots used. A shorter round
writes nothing between its chunks, and one no bigger than the first chunk is
a single submission, as it always was.
"""

import logging
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np

from qkan_orch.backends import Backend, Handle, get_backend
from qkan_orch.backends.base import ProviderJobLost
from qkan_orch.backends.calibration_snapshot import device_snapshot
from qkan_orch.backends.chunked_rounds import run_in_chunks
from qkan_orch.circuits import ExecutionPlan, PlanState, plan_for
from qkan_orch.circuits.batch import ActivationBatch, BatchResult
from qkan_orch.mitigation import Mitigation, mitigated
from qkan_orch.service.store import calibrations
from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.arrays import pack_arrays, unpack_arrays
from qkan_orch.service.store.states import JobState
from qkan_orch.workers.claimed_job import ClaimedJob, Step
from qkan_orch.workers.model_cache import MODELS

log = logging.getLogger("qkan.worker")
PERSIST_AFTER = 0.05  # seconds: a local round that took longer is written at once
MIN_CHUNK_SECONDS = 0.2  # a chunk of a local round lasts the time slice, but not less: a submission costs ~25 ms


def infer(claimed: ClaimedJob) -> Step:
    job = claimed.job
    model = MODELS.get(claimed.session, job.model_id) if job.model_id else None
    if model is None:
        return claimed.fail("model_deleted", "the job's model was deleted")
    plan = plan_for(model, unpack_arrays(job.inputs)["inputs"])
    return _Inference(claimed, plan, mitigated(get_backend(job.backend), Mitigation.from_json(job.mitigation))).run()


class _Inference:
    def __init__(self, claimed: ClaimedJob, plan: ExecutionPlan, backend: Backend) -> None:
        self.claimed, self.plan, self.backend = claimed, plan, backend
        self.job, self.writes, self.settings = claimed.job, claimed.writes, claimed.settings

    def run(self) -> Step:
        job = self.job
        state = PlanState.from_bytes(job.plan_state) if job.plan_state else self.plan.initial_state()
        deadline = time.monotonic() + self.settings.task_slice_seconds
        in_flight = job.in_flight
        while True:
            if in_flight:
                try:
                    result = self.backend.poll(Handle.from_json(in_flight["handle"]))
                except ProviderJobLost as exc:  # nothing was billed: run the round again
                    log.warning("job %s: %s; resubmitting the round", job.id, exc)
                    self.writes.event("resubmit", round=state.rounds_done + 1, message=str(exc))
                    in_flight = None
                    continue
                self.claimed.recovered()
                if result is None:
                    return self.claimed.again(self.settings.poll_interval, state=JobState.WAITING_ON_PROVIDER)
                batch = self.plan.next_batch(state)
                if batch is None:
                    return self._finished_with_a_round_in_flight(in_flight["round"], state)
                self._count(result)
                state, cancelled = self._absorb(state, batch, result, in_flight["submitted"], logged=True)
                in_flight = None
            else:
                batch = self.plan.next_batch(state)
                if batch is None:
                    return self._succeed(state)
                submitted = time.time()
                if self.backend.chunkable:
                    result = self._run_here(state, batch)
                    if result is None:  # cancelled between two chunks
                        return self.claimed.cancel()
                else:
                    handle = self.backend.submit(batch, shots=job.shots, pack=job.requested_pack, options=job.options)
                    self.claimed.recovered()
                    if handle.result is None:  # a provider job: its ids are stored before any wait
                        self._submitted(state, batch, handle, submitted)
                        return self.claimed.again(self.settings.poll_interval)
                    result = handle.result
                    self._count(result)
                state, cancelled = self._absorb(state, batch, result, submitted, logged=False)
            if cancelled:
                return self.claimed.cancel()
            if time.monotonic() > deadline:
                return self.claimed.again(0.0)

    def _submitted(self, state: PlanState, batch: ActivationBatch, handle: Handle, submitted: float) -> None:
        number = state.rounds_done
        self.writes.event("submitted", round=number + 1, provider_job_ids=handle.provider_job_ids)
        store.add_round(self.claimed.session, self.job.id, number, rows=batch.num_rows,
                        requested=batch.num_requested, provider_job_ids=handle.provider_job_ids)
        self.writes.commit(state=JobState.WAITING_ON_PROVIDER,
                           in_flight={"round": number, "submitted": submitted, "handle": handle.to_json()})

    def _run_here(self, state: PlanState, batch: ActivationBatch) -> BatchResult | None:
        """A local round, chunk by chunk; None if the job was cancelled between two chunks.

        Each chunk's usage is counted as it ends. A round expected to outlast the time slice commits
        its progress after every chunk but the last, and that commit answers whether to go on.
        """
        job, seconds = self.job, max(self.settings.task_slice_seconds, MIN_CHUNK_SECONDS)
        results: list[BatchResult] = []
        began, long = time.monotonic(), False
        for chunk in run_in_chunks(self.backend, batch, job.shots, job.requested_pack, job.options, seconds):
            results.append(chunk.result)
            self._count(chunk.result)
            long = long or time.monotonic() - began + chunk.seconds_left >= seconds
            if long and chunk.rows_done < batch.num_rows:
                self.writes.event("progress", round=state.rounds_done + 1, rows_done=chunk.rows_done,
                                  rows=batch.num_rows, shots_used=sum(r.shots * r.executions for r in results))
                if self.writes.commit():
                    return None
        return results[0] if len(results) == 1 else BatchResult.concatenate(results)

    def _count(self, result: BatchResult) -> None:
        """What a finished round or chunk used, added to the job's counters."""
        self.writes.add(shots_used=result.shots * result.executions, executions=result.executions,
                        qpu_seconds=result.qpu_seconds, cost=result.cost)

    def _absorb(self, state: PlanState, batch: ActivationBatch, result: BatchResult,
                submitted: float, logged: bool) -> tuple[PlanState, bool]:
        """Absorb a finished round (its usage already counted); write it now unless it is a cheap local one.
        Returns the cancel flag."""
        number = state.rounds_done
        state = self.plan.absorb(state, result)
        seconds = time.time() - submitted
        now = datetime.now(UTC)
        self.writes.set(state=JobState.RUNNING, plan_state=state.to_bytes, rounds_done=state.rounds_done,
                        in_flight=None)  # serialised only if written before the job ends
        if "placement" in result.metadata:
            placement = {"pack": result.metadata.get("pack"), **result.metadata["placement"]}
            calibration_id = self._calibration_id(placement.get("calibration_time"))
            self.writes.set(placement={**placement, "calibration_id": calibration_id} if calibration_id else placement)
        values = {"rows": batch.num_rows, "requested": batch.num_requested, "executions": result.executions,
                  "shots": result.shots, "provider_job_ids": list(result.provider_job_ids),
                  "finished_at": now, "seconds": seconds}
        if logged:
            store.complete_round(self.claimed.session, self.job.id, number, **values)
        else:
            self.writes.round(number, submitted_at=datetime.fromtimestamp(submitted, UTC), **values)
        self.writes.event("round", round=state.rounds_done, of=self.plan.total_rounds, rows=batch.num_rows,
                          executions=result.executions, seconds=round(seconds, 4), **_placement_summary(result),
                          **_mitigation_summary(result))
        if logged or seconds >= PERSIST_AFTER:
            return state, self.writes.commit()
        return state, False

    def _calibration_id(self, calibration_time: str | None) -> str | None:
        """The stored snapshot of the calibration the round was placed under (stored now if new, in this step's
        transaction); None for a device without one, or one recalibrated since the round was placed."""
        document = device_snapshot(self.backend)
        if document is None or calibration_time is None:
            return None
        if document.calibrated_at != datetime.fromisoformat(calibration_time):
            log.warning("job %s: %s was recalibrated since the round was placed; no snapshot recorded",
                        self.job.id, self.job.backend)
            return None
        return calibrations.store(self.claimed.session, document)[0]

    def _succeed(self, state: PlanState) -> Step:
        arrays, summary = result_arrays(self.plan, state)
        return self.claimed.succeed(pack_arrays(arrays), summary)

    def _finished_with_a_round_in_flight(self, number: int, state: PlanState) -> Step:
        """A bug, not a provider's doing: the stored plan state already absorbed the round the provider ran."""
        message = (f"round {number + 1} is in flight but the plan state has absorbed all "
                   f"{state.rounds_done} rounds; the job's stored state is inconsistent")
        log.error("job %s: %s", self.job.id, message)
        return self.claimed.fail("internal", message)


def result_arrays(plan: ExecutionPlan, state: PlanState) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """What a finished inference keeps, and its summary: outputs and standard errors (raw ones too where
    mitigated), every layer's outputs and edge activations (8 B per edge and sample, for the comparisons' edge
    errors) and where placed rounds ran (16 B per edge)."""
    outputs, stderr = plan.outputs(state)
    arrays = {"outputs": outputs, "stderr": stderr}
    if (raw := plan.raw_outputs(state)) is not None:
        arrays.update(raw_outputs=raw[0], raw_stderr=raw[1])
    arrays.update({f"layer.{k}": y for k, y in enumerate(state.layer_outputs)})
    arrays.update({f"activation.{k}": a for k, a in enumerate(state.activations)})
    arrays.update({f"edge_qubit.{k}": q for k, q in state.edge_qubits.items()})
    return arrays, {"samples": int(outputs.shape[0]), "outputs": int(outputs.shape[1])}


def _mitigation_summary(result: BatchResult) -> dict[str, Any]:
    """The mitigation a round ran with, its read-out matrices per copy and qubit included."""
    return {"mitigation": result.metadata["mitigation"]} if "mitigation" in result.metadata else {}


def _placement_summary(result: BatchResult) -> dict[str, Any]:
    """The qubits a round ran on, for its progress event (the full calibration is on the job)."""
    placement = result.metadata.get("placement")
    return {"qubits": placement["qubits"]} if placement else {}
