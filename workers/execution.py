"""One step of a job: claim it, do as much as is ready, persist, say when to come back.

A step never waits for a provider: if a submitted round is still pending it
returns "again in poll_interval seconds" and frees the worker. Local rounds
finish inside ``submit`` and are absorbed at once; a step keeps running
rounds until its time slice is used, then yields so other jobs get a turn.

A finished round is written — plan state, round log row, event, in one
transaction — before anything else happens, so a redelivered task resumes
from the last finished round. The one exception is a local round cheaper
than ``PERSIST_AFTER`` seconds: redoing it costs less than the transaction,
so such rounds are written together with the step's last change. A step uses
one database session and ends by releasing the lease in that same UPDATE.
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
from sqlalchemy.orm import Session

from qkan_orch.backends import Handle, get_backend
from qkan_orch.backends.accounts import redact
from qkan_orch.backends.base import ProviderJobFailed, ProviderJobLost, TransientBackendError
from qkan_orch.circuits import FeedForwardPlan, PlanState
from qkan_orch.circuits.batch import ActivationBatch, BatchResult
from qkan_orch.models import Model, build_model, fit, model_from_bytes, parse_spec
from qkan_orch.models.errors import InputError
from qkan_orch.service.settings import Settings
from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.arrays import pack_arrays, unpack_arrays
from qkan_orch.service.store.database import session_factory, session_scope
from qkan_orch.service.store.models import insert_model
from qkan_orch.service.store.tables import Job, StoredModel

log = logging.getLogger("qkan.worker")
TRANSIENT = (TransientBackendError, ConnectionError, TimeoutError)
PERSIST_AFTER = 0.05  # seconds: a local round that took longer is written at once


@dataclass(frozen=True)
class Step:
    """``again_in``: seconds until the job needs a worker again (None: never); ``task_id`` of that message."""

    again_in: float | None
    task_id: str | None = None


class _ModelCache:
    """Deserialised models by id: stored models never change (only get deleted, and not under active jobs)."""

    def __init__(self, size: int = 32) -> None:
        self.size, self.items = size, OrderedDict[str, Model]()

    def get(self, session: Session, model_id: str) -> Model | None:
        if model_id not in self.items:
            blob = session.scalar(select(StoredModel.blob).where(StoredModel.id == model_id))
            if blob is None:
                return None
            self.items[model_id] = model_from_bytes(blob, source=f"model {model_id}")
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        self.items.move_to_end(model_id)
        return self.items[model_id]


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
    with session_factory(url)() as session:
        job = store.claim(session, job_id, token, settings.lease_seconds)
        session.commit()
        if job is None:
            state, lease_until = store.lease_state(session, job_id)
            if state is None or state in store.TERMINAL:
                return Step(None)
            return Step(max(0.5, (lease_until or 0) - time.time() + 0.5), uuid.uuid4().hex)
        keeper = _LeaseKeeper(url, job_id, token, settings.lease_seconds)
        keeper.start()
        try:
            return _Runner(session, job, token, settings).run()
        except store.LeaseLost:
            session.rollback()
            log.warning("job %s: lease lost, another worker continues it", job_id)
            return Step(None)
        finally:
            keeper.stop()


class _Runner:
    def __init__(self, session: Session, job: Job, token: str, settings: Settings) -> None:
        self.session, self.job, self.token, self.settings = session, job, token, settings
        self.job_id = job.id
        self.unsaved: dict[str, Any] = {}  # job columns of absorbed rounds not yet written
        self.unsaved_rounds: list[dict[str, Any]] = []
        self.unsaved_events: list[dict[str, Any]] = []
        if job.plan_state is None and job.in_flight is None:  # the job's first step
            self.event("state", state="running")

    def event(self, kind: str, **data: Any) -> None:
        """An event written with the step's next change."""
        self.unsaved_events.append({"job_id": self.job_id, "kind": kind, "at": datetime.now(UTC), "data": data})

    def run(self) -> Step:
        job = self.job
        try:
            if job.cancel_requested:
                return self._cancel()
            if job.kind == "train":
                return self._train()
            model = MODELS.get(self.session, job.model_id) if job.model_id else None
            if model is None:
                return self._fail("model_deleted", "the job's model was deleted")
            return self._infer(model)
        except InputError as exc:
            self.session.rollback()
            return self._fail("invalid_input", str(exc))
        except ProviderJobFailed as exc:
            self.session.rollback()
            return self._fail("provider_failed", redact(str(exc)))
        except TRANSIENT as exc:
            self.session.rollback()
            return self._retry(exc)
        except store.LeaseLost:
            raise
        except Exception as exc:  # a bug or an SDK failure we do not know: fail loudly, keep the worker
            self.session.rollback()
            log.exception("job %s failed", self.job_id)
            return self._fail("internal", redact(f"{type(exc).__name__}: {exc}"))

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
                try:
                    result = backend.poll(Handle.from_json(in_flight["handle"]))
                except ProviderJobLost as exc:  # nothing was billed: run the round again
                    log.warning("job %s: %s; resubmitting the round", self.job_id, exc)
                    self.event("resubmit", round=state.rounds_done + 1, message=str(exc))
                    in_flight = None
                    continue
                if result is None:
                    return self._again(self.settings.poll_interval, state="waiting_on_provider")
                batch = plan.next_batch(state)
                assert batch is not None
                state, cancelled = self._absorb(plan, state, batch, result, in_flight["submitted"], logged=True)
                in_flight = None
            else:
                batch = plan.next_batch(state)
                if batch is None:
                    return self._finish(plan, state)
                submitted = time.time()
                handle = backend.submit(batch, shots=job.shots, pack=job.requested_pack, options=job.options)
                if handle.result is None:  # a provider job: its ids are stored before any wait
                    self._submitted(state, batch, handle, submitted)
                    return self._again(self.settings.poll_interval)
                state, cancelled = self._absorb(plan, state, batch, handle.result, submitted, logged=False)
            if cancelled:
                return self._cancel()
            if time.monotonic() > deadline:
                return self._again(0.0)

    def _submitted(self, state: PlanState, batch: ActivationBatch, handle: Handle, submitted: float) -> None:
        number = state.rounds_done
        in_flight = {"round": number, "submitted": submitted, "handle": handle.to_json()}
        self.event("submitted", round=number + 1, provider_job_ids=handle.provider_job_ids)
        store.change(self.session, self.job_id, self.token,
                     **{**self._take_unsaved(), "state": "waiting_on_provider", "in_flight": in_flight})
        store.add_round(self.session, self.job_id, number, rows=batch.num_rows, requested=batch.num_requested,
                        provider_job_ids=handle.provider_job_ids)
        self.session.commit()

    def _absorb(self, plan: FeedForwardPlan, state: PlanState, batch: ActivationBatch, result: BatchResult,
                submitted: float, logged: bool) -> tuple[PlanState, bool]:
        """Absorb a finished round; write it now unless it is a cheap local one. Returns the cancel flag."""
        number = state.rounds_done
        state = plan.absorb(state, result)
        seconds = time.time() - submitted
        now = datetime.now(UTC)
        self.unsaved.update(
            state="running", plan_state=state.to_bytes(), rounds_done=state.rounds_done, in_flight=None,
            shots_used=self.unsaved.get("shots_used", Job.shots_used) + result.shots * result.executions,
            executions=self.unsaved.get("executions", Job.executions) + result.executions,
        )
        if result.qpu_seconds or result.cost:
            self.unsaved.update(qpu_seconds=self.unsaved.get("qpu_seconds", Job.qpu_seconds) + result.qpu_seconds,
                                cost=self.unsaved.get("cost", Job.cost) + result.cost)
        if "placement" in result.metadata:
            self.unsaved["placement"] = {"pack": result.metadata.get("pack"), **result.metadata["placement"]}
        values = {"rows": batch.num_rows, "requested": batch.num_requested, "executions": result.executions,
                  "shots": result.shots, "provider_job_ids": list(result.provider_job_ids),
                  "finished_at": now, "seconds": seconds}
        if logged:
            store.complete_round(self.session, self.job_id, number, **values)
        else:
            self.unsaved_rounds.append({"job_id": self.job_id, "number": number, "submitted_at": now, **values})
        self.event("round", round=state.rounds_done, of=plan.total_rounds, rows=batch.num_rows,
                   executions=result.executions, seconds=round(seconds, 4), **_placement_summary(result))
        if logged or seconds >= PERSIST_AFTER:
            cancelled = store.change(self.session, self.job_id, self.token, **self._take_unsaved())
            self.session.commit()
            return state, cancelled
        return state, False

    def _take_unsaved(self) -> dict[str, Any]:
        """Queue the unsaved rounds' rows and events; return their job columns for the caller's UPDATE."""
        store.add_rounds(self.session, self.unsaved_rounds)
        store.add_events(self.session, self.unsaved_events)
        values, self.unsaved, self.unsaved_rounds, self.unsaved_events = self.unsaved, {}, [], []
        return values

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
        model = build_model(parse_spec(options["spec"]), seed=options.get("seed"))
        steps = int(options["steps"])
        every = max(1, steps // 10)

        def progress(step: int, loss: float) -> None:
            if step % every == 0 or step == steps:
                self.event("train", step=step, of=steps, loss=loss)
                self._take_unsaved()
                self.session.commit()

        trained = fit(
            model, torch.from_numpy(data["x"]).float(), torch.from_numpy(data["y"]).float(),
            optimizer=options["optimizer"], steps=steps, lr=options.get("lr"), seed=options.get("seed"),
            progress=False, callback=progress,
        )
        name = options.get("name") or f"trained-{job.id[:8]}"
        row = insert_model(self.session, job.owner_id, name, model, source="train")
        store.change(self.session, job.id, self.token, model_id=row.id)
        losses = np.asarray(trained.losses, dtype=np.float64)
        return self._succeed(pack_arrays({"losses": losses}), {"model_id": row.id, "final_loss": trained.final_loss})

    # -- how a step ends: each writes its last change and releases the lease in one commit -------

    def _again(self, delay: float, **values: Any) -> Step:
        task_id = uuid.uuid4().hex
        store.release(self.session, self.job_id, self.token, task_id=task_id, **{**self._take_unsaved(), **values})
        self.session.commit()
        return Step(delay, task_id)

    def _end(self, state: str, event: dict[str, Any], **values: Any) -> Step:
        now = datetime.now(UTC)
        self.event("state", state=state, **event)
        unsaved = self._take_unsaved()
        store.release(self.session, self.job_id, self.token,
                      **{**unsaved, "state": state, "finished_at": now, "in_flight": None, **values})
        self.session.commit()
        return Step(None)

    def _succeed(self, arrays: bytes, summary: dict[str, Any]) -> Step:
        store.store_result(self.session, self.job_id, arrays, summary)
        return self._end("succeeded", summary)

    def _fail(self, code: str, message: str) -> Step:
        return self._end("failed", {"code": code, "message": message}, error_code=code, error_message=message)

    def _retry(self, exc: Exception) -> Step:
        attempts = self.job.attempts + 1
        if attempts > self.settings.task_max_retries:
            return self._fail("provider_error", redact(f"gave up after {attempts - 1} retries: {exc}"))
        delay = self.settings.retry_backoff_seconds * 2 ** (attempts - 1)
        message = redact(str(exc))
        self.event("retry", attempt=attempts, delay=delay, message=message)
        return self._again(delay, attempts=attempts, error_message=f"retrying: {message}")

    def _cancel(self) -> Step:
        in_flight = self.session.scalar(select(Job.in_flight).where(Job.id == self.job_id))
        if in_flight:
            handle = Handle.from_json(in_flight["handle"])
            try:
                get_backend(handle.backend).cancel(handle)
            except Exception:  # the job ends cancelled either way; the provider may have finished it
                log.exception("job %s: provider cancel failed", self.job_id)
        return self._end("cancelled", {})


def _placement_summary(result: BatchResult) -> dict[str, Any]:
    """The qubits a round ran on, for its progress event (the full calibration is on the job)."""
    placement = result.metadata.get("placement")
    return {"qubits": placement["qubits"]} if placement else {}
