"""Training in slices: a trainer saved after any step and resumed from its bytes ends where fit() ends,
alone and as a service job that yields its worker between steps."""

import time
from collections.abc import Iterator

import pytest
import torch
from sqlalchemy import select

from conftest import make_inputs, make_model
from qkan_orch.backends import get_backend
from qkan_orch.circuits import FeedForwardPlan
from qkan_orch.client import Client
from qkan_orch.models import build_model, fit, parse_spec
from qkan_orch.models.functions import get_function
from qkan_orch.models.training import Trainer
from qkan_orch.service.local import LocalService
from qkan_orch.service.settings import Settings
from qkan_orch.service.store import jobs as store
from qkan_orch.service.store.arrays import pack_arrays
from qkan_orch.service.store.database import session_factory, session_scope, upgrade
from qkan_orch.service.store.keys import create_key
from qkan_orch.service.store.models import insert_model
from qkan_orch.service.store.states import JobState
from qkan_orch.service.store.tables import Job, JobEvent
from qkan_orch.workers.step import advance_job
from service_env import stack_env

SPEC = {"width": [1, 2, 1], "reps": 2, "preact_trainable": True}
STEPS = {"adam": 12, "lbfgs": 6}


def data() -> tuple[torch.Tensor, torch.Tensor]:
    f = get_function("sin")
    x = f.sample(32, seed=1).double()
    return x, f(x).double()


def tiny_model() -> torch.nn.Module:
    return build_model(parse_spec(SPEC), seed=3).double()


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
@pytest.mark.parametrize("split", [1, 2, 5])
def test_resuming_from_bytes_is_the_uninterrupted_run(optimizer: str, split: int) -> None:
    x, y = data()
    steps = STEPS[optimizer]
    whole = tiny_model()
    expected = fit(whole, x, y, optimizer=optimizer, steps=steps, progress=False).losses

    first = Trainer(tiny_model(), x, y, optimizer=optimizer, steps=steps)
    while first.steps_done < split:
        first.run(deadline=0.0)  # a slice that is over at once still takes one step
    saved = first.state_to_bytes()
    torch.manual_seed(12345)  # another job ran in between and drew from torch's RNG
    resumed = Trainer.from_bytes(saved, tiny_model(), x, y)  # a fresh model: every parameter comes from the bytes
    assert resumed.steps_done == split and not resumed.done
    resumed.run()

    assert resumed.done and resumed.losses == expected
    for (name, got), want in zip(resumed.model.state_dict().items(), whole.state_dict().values(), strict=True):
        assert torch.equal(got, want), name


def test_a_trainer_saved_in_every_step_still_matches() -> None:
    x, y = data()
    expected = fit(tiny_model(), x, y, optimizer="lbfgs", steps=4, progress=False).losses
    trainer = Trainer(tiny_model(), x, y, optimizer="lbfgs", steps=4)
    while not trainer.done:
        trainer.run(deadline=0.0)
        trainer = Trainer.from_bytes(trainer.state_to_bytes(), tiny_model(), x, y)
    assert trainer.losses == expected



# -- through the service: a slice so short that every step of a training job is one optimiser step -------------


@pytest.fixture(scope="module")
def sliced(tmp_path_factory) -> Iterator[tuple[LocalService, Client]]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("sliced")
    with stack_env("system-redis+postgresql", tmp) as env:
        env["QKAN_TASK_SLICE_SECONDS"] = "0.001"
        with LocalService(tmp, env, concurrency=1) as service, Client(service.url, service.create_key()) as qc:
            yield service, qc


def train_events(service: LocalService, job_id: str) -> list[int]:
    with session_scope(service.settings.resolved_database_url) as session:
        rows = session.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.kind == "train")
                               .order_by(JobEvent.id))
        return [data["step"] for data in rows]


def test_a_sliced_training_job_ends_where_an_uninterrupted_fit_ends(sliced) -> None:  # type: ignore[no-untyped-def]
    service, qc = sliced
    spec, steps = {"width": [1, 2, 1], "reps": 2}, 30
    job = qc.train(spec, function="sin", samples=64, steps=steps, optimizer="lbfgs", seed=0)
    status = qc.wait(job.id, timeout=120, progress=False)
    assert status.state == JobState.SUCCEEDED, status.error
    # every slice reports the step it stopped at, so all 30 steps appear (one run would report every third)
    assert train_events(service, job.id) == list(range(1, steps + 1))

    f = get_function("sin")
    x = f.sample(64, seed=0)
    whole = fit(build_model(parse_spec(spec), seed=0), x.float(), f(x).float(), optimizer="lbfgs", steps=steps,
                seed=0, progress=False)
    assert qc.job_result(job.id).losses == whole.losses


def test_a_cancel_between_slices_ends_the_training_job(sliced) -> None:  # type: ignore[no-untyped-def]
    service, qc = sliced
    job = qc.train({"width": [1, 2, 1], "reps": 2}, function="sin", samples=64, steps=10_000, optimizer="adam")
    deadline = time.monotonic() + 60
    while len(train_events(service, job.id)) < 3:
        assert time.monotonic() < deadline, "the training job made no progress"
        time.sleep(0.05)
    qc.cancel(job.id)
    final = qc.wait(job.id, timeout=60, progress=False)
    assert final.state == JobState.CANCELLED
    done = train_events(service, job.id)
    assert done == list(range(1, len(done) + 1)) and len(done) < 10_000
    time.sleep(0.5)
    assert train_events(service, job.id) == done  # no step ran after the cancel


def test_a_cancel_racing_a_claim_still_reaches_the_worker(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The API reads a job between two slices, a worker claims the next slice, then the API cancels:
    the job is not idle any more, so the flag the worker reads must be in the database."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    with session_scope(url) as session:
        key, _ = create_key(session, "k")
        session.add(Job(id="j", owner_id=key.id, kind="train", backend="train", queue="local", request_hash="h",
                        state=JobState.RUNNING, inputs=b""))
    with session_factory(url)() as api:
        job = api.get(Job, "j")  # read while idle
        with session_scope(url) as worker:
            assert store.claim(worker, "j", "token", 30.0) is not None
        assert not store.cancel_if_idle(api, "j")
        job.cancel_requested = True  # what the route does when a worker holds the job
        api.commit()
    with session_scope(url) as session:
        assert session.get(Job, "j").cancel_requested


# -- the worker step in this process, without a broker ---------------------------------------------------------


@pytest.mark.usefixtures("plugin_backends")
def test_a_finished_plan_with_a_round_in_flight_fails_the_job_plainly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A stored state that already absorbed the round its provider ran is a bug: fail, say so, do not guess."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    model = make_model(width=[2, 1], reps=1).float()
    x = make_inputs(3, 2)
    plan = FeedForwardPlan(model, x)
    state, last = plan.initial_state(), None
    while (batch := plan.next_batch(state)) is not None:
        last = batch
        state = plan.absorb(state, get_backend("exact").submit(batch).result)
    handle = get_backend("test:pending").submit(last, options={"pending_polls": 0, "log": str(tmp_path / "p.log")})
    with session_scope(url) as session:
        key, _ = create_key(session, "k")
        stored = insert_model(session, key.id, "m", model, source="upload")
        session.add(Job(id="j", owner_id=key.id, kind="inference", model_id=stored.id, backend="test:pending",
                        queue="local", request_hash="h", state=JobState.WAITING_ON_PROVIDER,
                        inputs=pack_arrays({"inputs": x}), plan_state=state.to_bytes(), rounds_total=1,
                        in_flight={"round": 0, "submitted": time.time(), "handle": handle.to_json()}))
    assert advance_job("j", Settings(database_url=url)).again_in is None
    with session_scope(url) as session:
        job = session.get(Job, "j")
        assert (job.state, job.error_code, job.lease_owner) == (JobState.FAILED, "internal", None)
        assert "round 1 is in flight" in job.error_message
