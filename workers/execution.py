"""One step of a job: claim it, do as much as is ready, persist, say when to come back.

A step never waits for a provider: if a submitted round is still pending it
returns "again in poll_interval seconds" and frees the worker. Local rounds
finish inside ``submit`` and are absorbed at once; a step keeps running
rounds until its time slice is used, then yields so other jobs get a turn.
After every round the plan state is written before anything else happens,
so a redelivered task resumes from the last finished round.
"""

import logging
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from sqlalchemy import select

from backends import Handle, get_backend
from backends.base import TransientBackendError
from circuits import FeedForwardPlan, PlanState
from circuits.batch import ActivationBatch, BatchResult
from models import Model, build_model, fit, model_from_bytes, parse_spec
from models.errors import InputError
from service.settings import Settings
from service.store import jobs as store
from service.store.arrays import pack_arrays, unpack_arrays
from service.store.database import session_scope
from service.store.models import insert_model
from service.store.tables import Job, StoredModel

log = logging.getLogger("qkan.worker")
TRANSIENT = (TransientBackendError, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class Step:
    """``again_in``: seconds until this job needs a worker again; None when it needs none."""

    again_in: float | None


class _ModelCache:
    """Deserialised models by (id, content hash): jobs on one model skip the parsing."""

    def __init__(self, size: int = 32) -> None:
        self.size, self.items = size, OrderedDict[tuple[str, str], Model]()

    def get(self, row: StoredModel) -> Model:
        key = (row.id, row.content_hash)
        if key not in self.items:
            self.items[key] = model_from_bytes(row.blob, source=f"model {row.id}")
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        self.items.move_to_end(key)
        return self.items[key]


MODELS = _ModelCache()


class _LeaseKeeper(threading.Thread):
    """Renews the lease while a long round runs, so nobody else takes the job over."""

    def __init__(self, url: str, job_id: str, token: str, seconds: float) -> None:
        super().__init__(daemon=True)
        self.args = (url, job_id, token, seconds)
        self.stopped = threading.Event()

    def run(self) -> None:
        url, job_id, token, seconds = self.args
        while not self.stopped.wait(seconds / 3):
            with session_scope(url) as session:
                if not store.renew(session, job_id, token, seconds):
                    return

    def stop(self) -> None:
        self.stopped.set()


def advance_job(job_id: str, settings: Settings) -> Step:
    """Run one step of ``job_id`` if nobody else is; safe to call any number of times."""
    url = settings.resolved_database_url
    token = uuid.uuid4().hex
    with session_scope(url) as session:
        if not store.claim(session, job_id, token, settings.lease_seconds):
            job = session.get(Job, job_id)
            if job is None or job.state in store.TERMINAL:
                return Step(None)
            return Step(max(0.5, (job.lease_until or 0) - time.time() + 0.5))
    keeper = _LeaseKeeper(url, job_id, token, settings.lease_seconds)
    keeper.start()
    try:
        return _Runner(job_id, token, settings).run()
    except store.LeaseLost:
        log.warning("job %s: lease lost, another worker continues it", job_id)
        return Step(None)
    finally:
        keeper.stop()
        with session_scope(url) as session:
            store.release(session, job_id, token)


class _Runner:
    def __init__(self, job_id: str, token: str, settings: Settings) -> None:
        self.job_id, self.token, self.settings = job_id, token, settings
        self.url = settings.resolved_database_url

    def run(self) -> Step:
        with session_scope(self.url) as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            self.job = job
            if job.cancel_requested:
                return self._cancel()
            if job.state == "queued":
                store.change(session, job.id, self.token, state="running", started_at=datetime.now(UTC))
                store.add_event(session, job.id, "state", state="running")
            model_row = session.get(StoredModel, job.model_id) if job.model_id else None
        try:
            if job.kind == "train":
                return self._train()
            if model_row is None:
                return self._fail("model_deleted", "the job's model was deleted")
            return self._infer(MODELS.get(model_row))
        except InputError as exc:
            return self._fail("invalid_input", str(exc))
        except TRANSIENT as exc:
            return self._retry(exc)
        except store.LeaseLost:
            raise
        except Exception as exc:  # a bug or an SDK failure we do not know: fail loudly, keep the worker
            log.exception("job %s failed", self.job_id)
            return self._fail("internal", f"{type(exc).__name__}: {exc}")

    # -- inference -------------------------------------------------------------------------------

    def _infer(self, model: Model) -> Step:
        job = self.job
        backend = get_backend(job.backend)
        plan = FeedForwardPlan(model, unpack_arrays(job.inputs)["inputs"])
        state = PlanState.from_bytes(job.plan_state) if job.plan_state else plan.initial_state()
        deadline = time.monotonic() + self.settings.task_slice_seconds
        in_flight = job.in_flight
        while True:
            if in_flight:
                result = backend.poll(Handle.from_json(in_flight["handle"]))
                if result is None:
                    self._waiting()
                    return Step(self.settings.poll_interval)
                batch = plan.next_batch(state)
                assert batch is not None
                state = self._absorb(plan, state, batch, result, in_flight["submitted"])
                in_flight = None
            else:
                batch = plan.next_batch(state)
                if batch is None:
                    return self._finish(plan, state)
                submitted = time.time()
                handle = backend.submit(batch, shots=job.shots, pack=job.pack, options=job.options)
                if handle.result is None:  # a provider job: its ids are stored before any wait
                    self._submitted(state, batch, handle, submitted)
                    return Step(self.settings.poll_interval)
                state = self._absorb(plan, state, batch, handle.result, submitted)
            if self._cancel_requested():
                return self._cancel()
            if time.monotonic() > deadline:
                return Step(0.0)

    def _submitted(self, state: PlanState, batch: ActivationBatch, handle: Handle, submitted: float) -> None:
        with session_scope(self.url) as session:
            store.change(
                session, self.job_id, self.token, state="waiting_on_provider",
                in_flight={"round": state.rounds_done, "submitted": submitted, "handle": handle.to_json()},
            )
            store.record_round(
                session, self.job_id, state.rounds_done, rows=batch.num_rows, requested=batch.num_requested,
                provider_job_ids=handle.provider_job_ids,
            )
            store.add_event(
                session, self.job_id, "submitted", round=state.rounds_done + 1,
                provider_job_ids=handle.provider_job_ids,
            )

    def _waiting(self) -> None:
        if self.job.state != "waiting_on_provider":
            with session_scope(self.url) as session:
                store.change(session, self.job_id, self.token, state="waiting_on_provider")

    def _absorb(
        self, plan: FeedForwardPlan, state: PlanState, batch: ActivationBatch, result: BatchResult, submitted: float
    ) -> PlanState:
        number = state.rounds_done
        state = plan.absorb(state, result)
        seconds = time.time() - submitted
        with session_scope(self.url) as session:
            store.change(
                session, self.job_id, self.token, state="running", plan_state=state.to_bytes(),
                rounds_done=state.rounds_done, in_flight=None,
                shots_used=Job.shots_used + result.shots * result.executions,
                executions=Job.executions + result.executions,
            )
            store.record_round(
                session, self.job_id, number, rows=batch.num_rows, requested=batch.num_requested,
                executions=result.executions,
                shots=result.shots, provider_job_ids=list(result.provider_job_ids),
                finished_at=datetime.now(UTC), seconds=seconds,
            )
            store.add_event(
                session, self.job_id, "round", round=state.rounds_done, of=plan.total_rounds,
                rows=batch.num_rows, executions=result.executions, seconds=round(seconds, 4),
            )
        self.job.state = "running"
        return state

    def _finish(self, plan: FeedForwardPlan, state: PlanState) -> Step:
        outputs, stderr = plan.outputs(state)
        arrays = {"outputs": outputs, "stderr": stderr}
        arrays.update({f"layer.{k}": y for k, y in enumerate(state.layer_outputs)})
        summary = {"samples": int(outputs.shape[0]), "outputs": int(outputs.shape[1])}
        return self._succeed(pack_arrays(arrays), summary)

    # -- training --------------------------------------------------------------------------------

    def _train(self) -> Step:
        job = self.job
        data = unpack_arrays(job.inputs)
        options = job.options
        spec = parse_spec(options["spec"])
        model = build_model(spec, seed=options.get("seed"))
        steps = int(options["steps"])
        every = max(1, steps // 10)

        def progress(step: int, loss: float) -> None:
            if step % every == 0 or step == steps:
                with session_scope(self.url) as session:
                    store.add_event(session, self.job_id, "train", step=step, of=steps, loss=loss)

        trained = fit(
            model, torch.from_numpy(data["x"]).float(), torch.from_numpy(data["y"]).float(),
            optimizer=options["optimizer"], steps=steps, lr=options.get("lr"), seed=options.get("seed"),
            progress=False, callback=progress,
        )
        with session_scope(self.url) as session:
            name = options.get("name") or f"trained-{job.id[:8]}"
            row = insert_model(session, job.owner_id, name, model, source="train")
            model_id = row.id
            store.change(session, job.id, self.token, model_id=model_id)
        losses = np.asarray(trained.losses, dtype=np.float64)
        return self._succeed(pack_arrays({"losses": losses}), {"model_id": model_id, "final_loss": trained.final_loss})

    # -- terminal states -------------------------------------------------------------------------

    def _succeed(self, arrays: bytes, summary: dict[str, Any]) -> Step:
        with session_scope(self.url) as session:
            store.store_result(session, self.job_id, arrays, summary)
            store.change(session, self.job_id, self.token, state="succeeded", finished_at=datetime.now(UTC))
            store.add_event(session, self.job_id, "state", state="succeeded", **summary)
        return Step(None)

    def _fail(self, code: str, message: str) -> Step:
        with session_scope(self.url) as session:
            store.change(
                session, self.job_id, self.token, state="failed", error_code=code, error_message=message,
                finished_at=datetime.now(UTC), in_flight=None,
            )
            store.add_event(session, self.job_id, "state", state="failed", code=code, message=message)
        return Step(None)

    def _retry(self, exc: Exception) -> Step:
        attempts = self.job.attempts + 1
        if attempts > self.settings.task_max_retries:
            return self._fail("provider_error", f"gave up after {attempts - 1} retries: {exc}")
        delay = self.settings.retry_backoff_seconds * 2 ** (attempts - 1)
        with session_scope(self.url) as session:
            store.change(session, self.job_id, self.token, attempts=attempts,
                         error_message=f"retrying: {exc}")
            store.add_event(session, self.job_id, "retry", attempt=attempts, delay=delay, message=str(exc))
        return Step(delay)

    def _cancel_requested(self) -> bool:
        with session_scope(self.url) as session:
            return bool(session.scalar(select(Job.cancel_requested).where(Job.id == self.job_id)))

    def _cancel(self) -> Step:
        with session_scope(self.url) as session:
            job = session.get(Job, self.job_id)
            in_flight = job.in_flight if job else None
        if in_flight:
            handle = Handle.from_json(in_flight["handle"])
            try:
                get_backend(handle.backend).cancel(handle)
            except Exception:  # the job ends cancelled either way; the provider may have finished it
                log.exception("job %s: provider cancel failed", self.job_id)
        with session_scope(self.url) as session:
            store.change(session, self.job_id, self.token, state="cancelled", finished_at=datetime.now(UTC),
                         in_flight=None)
            store.add_event(session, self.job_id, "state", state="cancelled")
        return Step(None)

