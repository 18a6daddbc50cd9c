"""/v1/estimate: what a run would use and cost, before anything is stored or sent to a provider."""

from dataclasses import asdict

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from qkan_orch.service.api.deps import KeyDep, SessionDep, SettingsDep
from qkan_orch.service.api.errors import ERROR_RESPONSES
from qkan_orch.service.api.quotes import RunRequest, quote
from qkan_orch.service.api.schemas import EstimateOut, EstimateRequest, QuoteOut

router = APIRouter(prefix="/v1/estimate", tags=["jobs"], responses=ERROR_RESPONSES)


@router.post("", response_model=QuoteOut, summary="Quote an inference job: tasks, shots, QPU seconds, USD")
async def estimate(body: EstimateRequest, key: KeyDep, session: SessionDep, settings: SettingsDep) -> QuoteOut:
    """The checks and estimate of a submission, without inputs or provider credentials: hardware whose account
    is not set up is quoted from the price table and its published limits (``assumptions`` says what)."""
    run = RunRequest(body.model_id, body.samples, body.backend, body.shots, body.pack, body.options, body.mitigation)
    quoted = await run_in_threadpool(quote, session, settings, key, run, dry_run=True)
    return QuoteOut(
        model_id=quoted.model_id, backend=body.backend, samples=body.samples, rounds=len(quoted.rows),
        circuits=sum(quoted.rows), shots=quoted.shots, width=quoted.width, mitigation=quoted.mitigation.to_json(),
        estimate=EstimateOut(**asdict(quoted.estimate)),
        price=asdict(quoted.backend.capabilities().price),
        configured=quoted.configured, assumptions=list(quoted.assumptions),
        within_budget=quoted.over_budget is None, budget_message=quoted.over_budget,
    )
