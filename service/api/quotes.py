"""What an inference run would use and cost: the one decision ``POST /v1/jobs`` and ``POST /v1/estimate`` share.

A quote is everything a submission decides before it stores anything —
limits, shots, mitigation, packing width, the estimate and the key's budget —
so a dry run tells the user what the submission would say. The estimate route
quotes hardware whose account is not set up from its published limits
(``backends.published``); a submission needs the real backend.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from qkan_orch.backends import get_backend
from qkan_orch.backends.base import Backend, Estimate, Pack
from qkan_orch.circuits import validate_inputs
from qkan_orch.circuits.sequence_plan import validate_sequences
from qkan_orch.mitigation import Mitigation, mitigated
from qkan_orch.models.errors import InputError
from qkan_orch.models.spec import ModelSpec, SequenceSpec
from qkan_orch.service.api.bounds import check_estimate, check_rounds, check_samples, round_rows
from qkan_orch.service.api.budgets import check_budget
from qkan_orch.service.api.errors import HTTPProblem, not_found
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.models import model_spec
from qkan_orch.service.store.tables import ApiKey


@dataclass(frozen=True)
class RunSettings:
    """How a submission asks to run: what a quote depends on beyond the model and the sample count."""

    backend: str
    shots: int | None
    pack: Pack
    options: dict[str, Any]
    mitigation: str | dict[str, Any] | None


@dataclass(frozen=True)
class Workload:
    """A key's model on a number of samples, checked: what every backend's quote of it shares."""

    model_id: str
    spec: ModelSpec
    rows: list[int]  # circuits per round, before deduplication
    inputs: np.ndarray | None  # a submission's inputs, checked against the model


@dataclass(frozen=True)
class Quote:
    workload: Workload
    backend: Backend
    configured: bool  # False: quoted from published limits, the provider account is not set up
    assumptions: tuple[str, ...]
    shots: int | None
    width: int | None  # template copies per circuit (dry runs only: a submission needs no second validation)
    mitigation: Mitigation
    estimate: Estimate
    over_budget: str | None  # the 402 message a submission would get, or None


def workload(session: Session, settings: Settings, key: ApiKey, model_id: str, samples: int,
             inputs: np.ndarray | None = None) -> Workload:
    """The model (404 if the key has none of that id), the samples and rounds against the limits, and the
    inputs (if given) against the model."""
    spec = model_spec(session, key.id, model_id)
    if spec is None:
        raise not_found("model", model_id)
    return workload_of(spec, settings, model_id, samples, inputs)


def workload_of(spec: ModelSpec, settings: Settings, model_id: str, samples: int,
                inputs: np.ndarray | None = None) -> Workload:
    """``workload`` once the model's spec is found: the checks alone (the load bench's floor shares them)."""
    check_samples(settings, samples, "inputs")
    if isinstance(spec, SequenceSpec) and spec.kind == "lstm":
        raise InputError("model_id", "a classical LSTM has no quantum layers to run; evaluate it with torch")
    if inputs is not None:
        inputs = (validate_sequences(inputs, spec) if isinstance(spec, SequenceSpec)
                  else validate_inputs(inputs, spec.in_dim))
    rows = round_rows(spec, samples)
    check_rounds(settings, rows, samples)
    return Workload(model_id, spec, rows, inputs)


def quote(session: Session, settings: Settings, key: ApiKey, work: Workload, run: RunSettings, *,
          dry_run: bool = False) -> Quote:
    """Check ``run`` of ``work`` as a submission would and estimate it. A dry run quotes unconfigured hardware
    from its published limits and reports a budget overrun in ``over_budget``; a submission is refused (402)."""
    if dry_run:
        from qkan_orch.backends.published import quoting_backend

        backend, assumptions = quoting_backend(run.backend)
    else:
        backend, assumptions = get_backend(run.backend), ()
    caps = backend.capabilities()
    shots = caps.shots_for(run.shots)
    if shots is not None and shots > settings.max_shots:
        raise InputError("shots", f"{shots} exceeds this service's limit of {settings.max_shots}")
    mitigation = Mitigation.parse(run.mitigation, caps)
    runner = mitigated(backend, mitigation)
    width = runner.validate(shots, run.pack, run.options)[1] if dry_run else None
    # the estimate validates shots, pack and options, and counts calibration rows and fold scales
    estimate = runner.estimate(work.rows, shots, run.pack, run.options, columns=work.spec.columns)
    check_estimate(settings, estimate)
    over_budget = None
    try:
        check_budget(session, key, estimate)  # locks the key's row until the submission's insert commits
    except HTTPProblem as problem:
        if not dry_run:
            raise
        over_budget = problem.message
    return Quote(work, backend, not assumptions, assumptions, shots, width, mitigation, estimate, over_budget)
