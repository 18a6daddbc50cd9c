"""Comparisons: the reference and each backend as one inference job on the same inputs, and how they agree.

The reference runs without shots or mitigation, so its outputs are exact (σ_r = 0): the ideal model on an
analytic backend, or the device's calibrated noise on an emulator (``emulate:<device>``), where "is the hardware
doing what its calibration says?" becomes one χ² p-value.

Creating one quotes every job as a submission would (limits, estimate, the
key's budget — each job's estimate counts against it, the earlier ones
already in the session) and refuses the whole comparison if any job is
refused, naming ``backends[i]``; then the comparison and its jobs are
committed together and published (``job_records.publish``). How a backend
agrees with the reference is computed when the comparison is read, from both
jobs' stored results (``comparisons.agreement``), once both have succeeded.
"""

import uuid
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from qkan_orch.backends import get_backend
from qkan_orch.comparisons import Agreement, agreement, edge_rmse, independent_samples
from qkan_orch.models import parse_spec
from qkan_orch.models.errors import InputError
from qkan_orch.service.api.job_records import new_job, publish
from qkan_orch.service.api.job_views import jobs_out
from qkan_orch.service.api.quotes import RunSettings, quote, workload
from qkan_orch.service.api.rate_limits import check_active_jobs
from qkan_orch.service.api.schemas import (
    AgreementOut,
    ComparedOut,
    ComparisonOut,
    ComparisonRequest,
    EdgeErrorOut,
    EstimateOut,
    JobOut,
    LayerAgreementOut,
)
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.arrays import unpack_arrays
from qkan_orch.service.store.states import TERMINAL, JobState
from qkan_orch.service.store.tables import ApiKey, Comparison, Job, JobResult, StoredModel

MAX_BACKENDS = 16


def create_comparison(session: Session, broker: Celery, settings: Settings, key: ApiKey, body: ComparisonRequest,
                      inputs: np.ndarray) -> Comparison:
    """The comparison and its jobs (the reference's first), all quoted before any is stored."""
    _check_backends(body)
    # the model, samples and inputs checked once for every job, before the comparison row that refers to them
    work = workload(session, settings, key, body.model_id, len(inputs) if inputs.ndim else 1, inputs)
    assert work.inputs is not None
    check_active_jobs(session, settings, key, 1 + len(body.backends))  # the reference's job and one per backend
    comparison = Comparison(id=str(uuid.uuid4()), owner_id=key.id, model_id=body.model_id, reference=body.reference,
                            backends=list(body.backends),
                            settings=body.model_dump(include={"shots", "pack", "options", "mitigation",
                                                              "mitigation_per_backend"}))
    session.add(comparison)
    jobs = []
    for field, backend in [("reference", body.reference),
                           *((f"backends[{i}]", b) for i, b in enumerate(body.backends))]:
        overridden = backend in body.mitigation_per_backend
        if field == "reference":  # exact probabilities: no shots, nothing to mitigate
            run = RunSettings(backend, None, body.pack, body.options.get(backend, {}), "none")
        else:
            run = RunSettings(backend, body.shots, body.pack, body.options.get(backend, {}),
                              body.mitigation_per_backend.get(backend, body.mitigation))
        try:
            quoted = quote(session, settings, key, work, run)
        except InputError as exc:
            raise InputError(_field(exc.field, field, backend, overridden), f"{backend}: {exc.message}") from None
        job = new_job(key, kind="inference", model_id=work.model_id, backend=backend, shots=quoted.shots,
                      pack=body.pack, options=run.options, arrays={"inputs": work.inputs},
                      rounds_total=len(work.rows), estimate=quoted.estimate, mitigation=quoted.mitigation.to_json(),
                      comparison_id=comparison.id)
        session.add(job)  # flushed before the next quote's budget sum, so that sum includes it
        jobs.append(job)
    publish(session, broker, jobs, also_undo=[comparison])
    return comparison


def _field(field: str, where: str, backend: str, overridden: bool) -> str:
    """A submission's error field as the comparison's body names it (``backends[i]``, ``options.<backend>.x``,
    ``mitigation_per_backend.<backend>``)."""
    if field == "backend":
        return where
    if overridden and field.split(".")[0] == "mitigation":
        return field.replace("mitigation", f"mitigation_per_backend.{backend}", 1)
    return field.replace("options.", f"options.{backend}.", 1)


def _check_backends(body: ComparisonRequest) -> None:
    _check_reference(body.reference)
    if not body.backends:
        raise InputError("backends", "name at least one backend to compare with the reference")
    if len(body.backends) > MAX_BACKENDS:
        raise InputError("backends", f"{len(body.backends)} backends; a comparison takes at most {MAX_BACKENDS}")
    seen: set[str] = set()
    for i, backend in enumerate(body.backends):
        if backend == body.reference:
            raise InputError(f"backends[{i}]", f"'{backend}' is the reference (compare it with another reference)")
        if backend in seen:
            raise InputError(f"backends[{i}]", f"'{backend}' is named twice")
        seen.add(backend)
    for name in body.options:
        if name not in seen and name != body.reference:
            raise InputError(f"options.{name}", "names no backend of this comparison")
    for name in body.mitigation_per_backend:
        if name == body.reference:
            raise InputError(f"mitigation_per_backend.{name}", "the reference runs unmitigated: its probabilities "
                                                                 "are exact")
        if name not in seen:
            raise InputError(f"mitigation_per_backend.{name}", "names no backend of this comparison")


def _check_reference(name: str) -> None:
    """The reference must give exact probabilities, run without shots: σ_r = 0 is what makes χ² and the slope
    measure the compared backend alone, not the sum of two backends' shot noise. An analytic backend measures
    how far the compared one is from the ideal model; a noisy emulator (``emulate:<device>``) how far it is from
    what its device's calibration predicts."""
    try:
        caps = get_backend(name).capabilities()
    except InputError as exc:
        raise InputError("reference", exc.message) from None
    if not caps.exact_without_shots:
        raise InputError("reference", f"'{name}' is a {caps.kind} that only samples; the reference must give "
                                      "exact probabilities: an analytic backend (exact) or a noisy emulator run "
                                      "without shots (emulate:dm, emulate:fake_<device>)")


def comparisons_out(session: Session, comparisons: Sequence[Comparison]) -> list[ComparisonOut]:
    """The comparisons' views: their jobs (rounds in one query) and results read once each."""
    ids = [c.id for c in comparisons]
    jobs = list(session.scalars(select(Job).where(Job.comparison_id.in_(ids)).order_by(Job.created_at))) if ids else []
    views = dict(zip((j.id for j in jobs), jobs_out(session, jobs), strict=True))
    done = [j.id for j in jobs if j.state == JobState.SUCCEEDED]
    results = {r.job_id: unpack_arrays(r.arrays)
               for r in session.scalars(select(JobResult).where(JobResult.job_id.in_(done)))} if done else {}
    kinds = _kinds(session, {c.model_id for c in comparisons if c.model_id})
    out = []
    for comparison in comparisons:
        own = {j.backend: j for j in jobs if j.comparison_id == comparison.id}
        reference = own[comparison.reference]
        ref_arrays = results.get(reference.id)
        # the jobs share these inputs, so which samples share circuits is the same for all of them
        independent = (independent_samples(unpack_arrays(reference.inputs)["inputs"],
                                           kinds.get(comparison.model_id or "", "")) if ref_arrays else None)
        compared = [_compared(own[b], views[own[b].id], results.get(own[b].id), ref_arrays, independent)
                    for b in comparison.backends]
        estimates = [j.estimate for j in own.values() if j.estimate]
        out.append(ComparisonOut(
            id=comparison.id, model_id=comparison.model_id,
            reference=ComparedOut(backend=reference.backend, job=views[reference.id]), backends=compared,
            finished=all(j.state in TERMINAL for j in own.values()),
            estimate=_summed(estimates),
            created_at=comparison.created_at,
        ))
    return out


def _kinds(session: Session, model_ids: set[str]) -> dict[str, str]:
    """The compared models' kinds, in one query; a deleted model has none (``independent_samples`` then applies
    the rules that hold for every kind)."""
    if not model_ids:
        return {}
    rows = session.execute(select(StoredModel.id, StoredModel.spec).where(StoredModel.id.in_(model_ids)))
    return {model_id: parse_spec(spec).kind for model_id, spec in rows}


def _summed(estimates: list[dict]) -> EstimateOut:
    """Tasks, executions, shots, seconds and cost add up; worker memory is the largest job's (they run apart)."""
    total = {k: sum(e.get(k, 0) for e in estimates) for k in EstimateOut.model_fields if k != "peak_bytes"}
    return EstimateOut(**total, peak_bytes=max((e.get("peak_bytes", 0) for e in estimates), default=0))


def _compared(job: Job, view: JobOut, arrays: dict[str, np.ndarray] | None,
              reference: dict[str, np.ndarray] | None, independent: np.ndarray | None) -> ComparedOut:
    out = ComparedOut(backend=job.backend, job=view)
    if arrays is None or reference is None:
        return out
    ref, ref_se = reference["outputs"], reference["stderr"]
    out.agreement = _agreement_out(agreement(arrays["outputs"], arrays["stderr"], ref, ref_se, independent))
    if "raw_outputs" in arrays:
        out.raw_agreement = _agreement_out(agreement(arrays["raw_outputs"], arrays["raw_stderr"], ref, ref_se,
                                                     independent))
    count = sum(1 for k in arrays if k.startswith("layer."))
    out.layers = [_layer(k, arrays, reference) for k in range(count)]
    return out


def _layer(k: int, arrays: dict[str, np.ndarray], reference: dict[str, np.ndarray],
           worst: int = 5) -> LayerAgreementOut:
    """Layer ``k``'s output RMSE and, where both jobs kept their activations, each edge's RMSE over the samples
    and the ``worst`` edges. In layers after the first, a backend's edges see its own (noisy) inputs: the edge
    errors there include what earlier layers passed on."""
    output_rmse = float(np.sqrt(np.mean((arrays[f"layer.{k}"] - reference[f"layer.{k}"]) ** 2)))
    act, ref = arrays.get(f"activation.{k}"), reference.get(f"activation.{k}")
    if act is None or ref is None or act.shape != ref.shape:
        return LayerAgreementOut(layer=k, output_rmse=output_rmse, activation_rmse=None, worst_edges=[])
    per_edge = edge_rmse(act, ref)  # (out, in)
    order = np.argsort(per_edge, axis=None)[::-1][:worst]
    placed = arrays.get(f"edge_qubit.{k}")  # (2, out, in): qubit, share; None where not placed
    edges = [EdgeErrorOut(output=int(o), input=int(i), rmse=float(per_edge[o, i]),
                          **_placement(placed[:, o, i]) if placed is not None else {})
             for o, i in zip(*np.unravel_index(order, per_edge.shape), strict=True)]
    return LayerAgreementOut(layer=k, output_rmse=output_rmse, activation_rmse=float(np.sqrt(np.mean(per_edge**2))),
                             worst_edges=edges)


def _placement(where: np.ndarray) -> dict[str, Any]:
    qubit, share = where
    return {"qubit": int(qubit), "qubit_share": float(share)} if qubit >= 0 else {}


def _agreement_out(found: Agreement) -> AgreementOut:
    """JSON has no NaN or infinity: a constant reference's slope, or analytic results that differ, are null."""
    values = asdict(found)
    return AgreementOut(**{k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in values.items()})
