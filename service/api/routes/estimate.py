"""/v1/estimate: what a run would use and cost, before anything is stored or sent to a provider."""

from dataclasses import asdict

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from qkan_orch.service.api.deps import KeyDep, SessionDep, SettingsDep
from qkan_orch.service.api.errors import ERROR_RESPONSES
from qkan_orch.service.api.quotes import Quote, RunSettings, quote, workload
from qkan_orch.service.api.schemas import EstimateOut, EstimateRequest, QuoteOut
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.tables import ApiKey

router = APIRouter(prefix="/v1/estimate", tags=["jobs"], responses=ERROR_RESPONSES)


@router.post("", response_model=QuoteOut, summary="Quote an inference job: tasks, shots, QPU seconds, USD")
async def estimate(body: EstimateRequest, key: KeyDep, session: SessionDep, settings: SettingsDep) -> QuoteOut:
    """The checks and estimate of a submission, without inputs or provider credentials: hardware whose account
    is not set up is quoted from the price table and its published limits (``assumptions`` says what)."""
    run = RunSettings(body.backend, body.shots, body.pack, body.options, body.mitigation)
    quoted = await run_in_threadpool(_dry_run, session, settings, key, body, run)
    work = quoted.workload
    assert quoted.width is not None  # a dry run's
    return QuoteOut(
        model_id=work.model_id, backend=body.backend, samples=body.samples, rounds=len(work.rows),
        circuits=sum(work.rows), shots=quoted.shots, width=quoted.width, mitigation=quoted.mitigation.to_json(),
        estimate=EstimateOut(**asdict(quoted.estimate)),
        price=asdict(quoted.backend.capabilities().price),
        configured=quoted.configured, assumptions=list(quoted.assumptions),
        within_budget=quoted.over_budget is None, budget_message=quoted.over_budget,
    )


def _dry_run(session: Session, settings: Settings, key: ApiKey, body: EstimateRequest, run: RunSettings) -> Quote:
    return quote(session, settings, key, workload(session, settings, key, body.model_id, body.samples), run,
                 dry_run=True)
