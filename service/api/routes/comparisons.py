"""/v1/comparisons: backends run on the same inputs against a reference, with how each agrees."""

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from qkan_orch.service.api.comparisons import comparisons_out, create_comparison
from qkan_orch.service.api.deps import BrokerDep, CourierDep, KeyDep, OffsetQuery, SessionDep, SettingsDep
from qkan_orch.service.api.errors import ERROR_RESPONSES, ERROR_RESPONSES_SUBMIT, HTTPProblem, not_found
from qkan_orch.service.api.job_records import cancel_job
from qkan_orch.service.api.schemas import ComparisonOut, ComparisonPage, ComparisonRequest
from qkan_orch.service.api.uploads import inputs_array
from qkan_orch.service.store.states import TERMINAL
from qkan_orch.service.store.tables import ApiKey, Comparison, Job

router = APIRouter(prefix="/v1/comparisons", tags=["comparisons"], responses=ERROR_RESPONSES)


@router.post("", status_code=202, response_model=ComparisonOut, responses=ERROR_RESPONSES_SUBMIT,
             summary="Compare backends with a reference on the same inputs")
def create(body: ComparisonRequest, response: Response, key: KeyDep, session: SessionDep, settings: SettingsDep,
           broker: BrokerDep) -> ComparisonOut:
    """One inference job for the reference and one per backend, through the usual queues; each is quoted and
    budgeted as a submission, and if any is refused nothing is stored (the error names ``backends[i]``)."""
    comparison = create_comparison(session, broker, settings, key, body, inputs_array(body.inputs))
    response.headers["Location"] = f"/v1/comparisons/{comparison.id}"
    return comparisons_out(session, [comparison])[0]


@router.get("", response_model=ComparisonPage, summary="Your comparisons, newest first")
def list_comparisons(key: KeyDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=100)] = 20,
                     offset: OffsetQuery = 0) -> ComparisonPage:
    mine = Comparison.owner_id == key.id
    total = session.scalar(select(func.count()).select_from(Comparison).where(mine)) or 0
    rows = session.scalars(select(Comparison).where(mine).order_by(Comparison.created_at.desc(), Comparison.id)
                           .limit(limit).offset(offset)).all()
    return ComparisonPage(total=total, limit=limit, offset=offset, items=comparisons_out(session, rows))


@router.get("/{comparison_id}", response_model=ComparisonOut, summary="A comparison: its jobs and agreement")
def get_comparison(comparison_id: str, key: KeyDep, session: SessionDep) -> ComparisonOut:
    return comparisons_out(session, [_own(session, key, comparison_id)])[0]


@router.delete("/{comparison_id}", status_code=202, response_model=ComparisonOut,
               summary="Cancel a comparison's jobs that have not ended")
def cancel(comparison_id: str, key: KeyDep, session: SessionDep, courier: CourierDep) -> ComparisonOut:
    comparison = _own(session, key, comparison_id)
    for job in session.scalars(select(Job).where(Job.comparison_id == comparison.id)).all():
        if job.state not in TERMINAL:
            try:
                cancel_job(session, courier, job)
            except HTTPProblem as problem:  # it ended meanwhile: nothing left to cancel
                if problem.code != "already_finished":
                    raise
    return comparisons_out(session, [comparison])[0]


def _own(session: Session, key: ApiKey, comparison_id: str) -> Comparison:
    comparison = session.get(Comparison, comparison_id)
    if comparison is None or comparison.owner_id != key.id:
        raise not_found("comparison", comparison_id)
    return comparison
