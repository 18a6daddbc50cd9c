"""Local rounds in chunks of rows: the same result as one submission, progress and cancel between chunks.

The chunker alone (no services), the worker step in this process (commits
counted), and the acceptance on real processes: a ≥ 30 s round on
braket:local_dm cancelled after 5 s, through the API, a Celery worker,
Redis and PostgreSQL.
"""

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from conftest import make_inputs, make_model
from qkan_orch.backends import get_backend
from qkan_orch.backends.base import Capabilities, Handle
from qkan_orch.backends.chunked_rounds import ANALYTIC_ROWS, FIRST_ROWS, FIRST_SHOTS, run_in_chunks
from qkan_orch.backends.exact import ExactBackend
from qkan_orch.backends.runner import run_plan
from qkan_orch.backends.sampling import LocalSamplingBackend
from qkan_orch.circuits import FeedForwardPlan
from qkan_orch.circuits.batch import ActivationBatch, BatchResult, Template
from qkan_orch.client import Client, JobState
from qkan_orch.models import load_model, save_model
from qkan_orch.service.local import LocalService
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.arrays import pack_arrays
from qkan_orch.service.store.database import session_scope, upgrade
from qkan_orch.service.store.keys import create_key
from qkan_orch.service.store.models import insert_model
from qkan_orch.service.store.tables import Job
from qkan_orch.workers.step import advance_job
from service_env import stack_env


def random_batch(rows: int, ansatz: str = "pz_encoding", reps: int = 3, seed: int = 0) -> ActivationBatch:
    template = Template(ansatz, reps)
    params = np.random.default_rng(seed).uniform(-np.pi, np.pi, (rows, template.num_params))
    return ActivationBatch(template, params, (), "z")


def joined(chunks: list[Any]) -> BatchResult:
    return BatchResult.concatenate([c.result for c in chunks])


# -- the chunker alone -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ansatz", ["pz_encoding", "rpz_encoding", "real"])
def test_exact_chunks_are_bit_identical_to_one_submission(ansatz: str) -> None:
    """Chunks end on whole SIMD blocks, so torch computes every row in the lane it has in the whole batch (5000
    rows: below the size at which torch splits one array over threads, which would move the lanes itself)."""
    batch, exact = random_batch(5000, ansatz), get_backend("exact")
    chunks = list(run_in_chunks(exact, batch, None, None, None, chunk_seconds=1e-9))  # every chunk one block
    assert len(chunks) == -(-5000 // ANALYTIC_ROWS)
    assert all(c.rows_done % ANALYTIC_ROWS == 0 for c in chunks[:-1]) and chunks[-1].rows_done == 5000
    whole = exact.submit(batch).result
    assert np.array_equal(joined(chunks).p0, whole.p0) and not joined(chunks).p0_stderr.any()


def test_sampling_chunks_add_up_to_one_submission_within_shot_noise() -> None:
    """Whole packed circuits per chunk: executions and shots equal one submission's; p0 agree within their errors."""
    aer, shots, pack = get_backend("aer"), 4000, 4
    batch = random_batch(301, reps=2)
    chunks = list(run_in_chunks(aer, batch, shots, pack, {"seed": 3}, chunk_seconds=0.02))
    whole = aer.submit(batch, shots=shots, pack=pack, options={"seed": 3}).result
    result = joined(chunks)
    assert len(chunks) > 2 and all(c.rows_done % pack == 0 for c in chunks[:-1])
    assert (result.executions, result.shots) == (whole.executions, whole.shots) == (-(-301 // pack), shots)
    z = np.abs(result.p0 - whole.p0) / np.hypot(result.p0_stderr, whole.p0_stderr)
    assert z.max() < 5.5  # 301 independent differences: |z| ≥ 5.5 has odds ~1e-5
    first = chunks[0].rows_done  # the first chunk keeps the seed, later ones are seeded apart (independent errors)
    assert np.array_equal(result.p0[:first], whole.p0[:first]) and not np.array_equal(result.p0, whole.p0)


class Recording(ExactBackend):
    """The exact simulator, remembering every batch it was given."""

    def __init__(self) -> None:
        self.batches: list[ActivationBatch] = []

    def submit(self, batch: ActivationBatch, shots: int | None = None, pack: int | None = None,
               options: dict[str, Any] | None = None) -> Handle:
        self.batches.append(batch)
        return super().submit(batch, shots, pack, options)


def test_a_round_no_bigger_than_the_first_chunk_is_one_submission_of_the_batch_itself() -> None:
    small, backend = random_batch(ANALYTIC_ROWS), Recording()
    [chunk] = run_in_chunks(backend, small, None, None, None, chunk_seconds=1e-9)
    assert backend.batches == [small] and chunk.rows_done == ANALYTIC_ROWS and chunk.seconds_left == 0
    bigger = random_batch(ANALYTIC_ROWS + 1)
    rows_done = [c.rows_done for c in run_in_chunks(backend, bigger, None, None, None, chunk_seconds=1e-9)]
    assert rows_done == [ANALYTIC_ROWS, ANALYTIC_ROWS + 1] and backend.batches[1] is not bigger


class HalfCoin(LocalSamplingBackend):
    """A sampling backend that reads half its shots as 0, remembering how many circuits each submission ran."""

    name = "test:half-coin"

    def __init__(self) -> None:
        self.circuits: list[int] = []

    def capabilities(self) -> Capabilities:
        return Capabilities(name=self.name, kind="simulator", qubits=8, noise="none", default_pack=1, max_pack=8)

    def count_zeros(self, template: Template, packed: np.ndarray, width: int, shots: int,
                    options: dict[str, Any], metadata: dict[str, Any]) -> np.ndarray:
        self.circuits.append(packed.shape[0])
        return np.full((packed.shape[0], width), shots // 2)


@pytest.mark.parametrize(("shots", "pack", "first_circuits"), [
    (1000, 1, FIRST_ROWS), (1000, 8, FIRST_ROWS // 8), (10_000, 1, FIRST_SHOTS // 10_000)])
def test_the_first_chunk_is_small_in_rows_and_in_shots(shots: int, pack: int, first_circuits: int) -> None:
    """So that a cancel or the first progress report never waits long, however many shots a row takes."""
    backend = HalfCoin()
    chunks = run_in_chunks(backend, random_batch(400), shots, pack, None, chunk_seconds=10.0)
    next(chunks)
    assert backend.circuits == [first_circuits]


# -- the worker step in this process: a round that fits one chunk pays no extra commit -------------------------


@pytest.mark.parametrize("samples", [3, 200])
def test_short_local_rounds_cost_no_commit_beyond_claim_and_finish(tmp_path: Path, samples: int) -> None:
    """3 samples: one chunk per round (the path small jobs always took); 200 samples: rounds of 800 and 400 rows,
    two chunks each, still far too cheap to write anything between them."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    upgrade(url)
    model, x = make_model(width=[2, 2, 1], reps=2).float(), make_inputs(samples, 2)
    with session_scope(url) as session:
        key, _ = create_key(session, "k")
        stored = insert_model(session, key.id, "m", model, source="upload")
        session.add(Job(id="j", owner_id=key.id, kind="inference", model_id=stored.id, backend="exact",
                        queue="local", request_hash="h", state=JobState.QUEUED, rounds_total=2,
                        inputs=pack_arrays({"inputs": x})))
    commits: list[Session] = []
    listener = commits.append
    event.listen(Session, "after_commit", listener)
    try:
        step = advance_job("j", Settings(database_url=url))
    finally:
        event.remove(Session, "after_commit", listener)
    assert step.again_in is None and len(commits) == 2  # claim, finish
    with session_scope(url) as session:
        assert session.get(Job, "j").state == JobState.SUCCEEDED


# -- real processes: Redis, a Celery worker, PostgreSQL, the API over HTTP --------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[tuple[LocalService, str]]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("chunks")
    with stack_env("system-redis+postgresql", tmp) as env, LocalService(tmp, env, concurrency=1) as svc:
        yield svc, svc.create_key("chunks")


def upload(qc: Client, model: Any, folder: Path) -> tuple[str, Path]:
    path = folder / "model.safetensors"
    save_model(model, str(path))
    return qc.upload_model(path).id, path


def all_events(url: str, key: str, job_id: str, into: list[tuple[str, dict[str, Any]]]) -> None:
    """The job's event stream, read to its end as a client would."""
    with Client(url, key) as qc:
        into.extend(qc.events(job_id))


def test_chunked_rounds_through_the_service_match_one_submission(service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Rounds of 600 and 300 rows run as chunks in the worker; in this process run_plan submits each whole."""
    svc, key = service
    x = make_inputs(100, 2, seed=5)
    with Client(svc.url, key) as qc:
        model_id, path = upload(qc, make_model(width=[2, 3, 1], reps=2).float(), tmp_path)
        exact = qc.wait(qc.submit(model_id, x).id, timeout=120, progress=False)
        sampled = qc.wait(qc.submit(model_id, x, backend="aer", shots=4000, pack=4).id, timeout=120, progress=False)
        assert exact.state == sampled.state == JobState.SUCCEEDED, (exact.error, sampled.error)
        assert [r.rows for r in exact.rounds] == [600, 300]
        got_exact, got_sampled = qc.result(exact.id), qc.result(sampled.id)
    model = load_model(str(path))
    want = run_plan(FeedForwardPlan(model, x), get_backend("exact"))
    assert np.array_equal(got_exact[0], want.outputs)
    assert sampled.executions == 600 // 4 + 300 // 4 and sampled.shots_used == 4000 * sampled.executions
    alone = run_plan(FeedForwardPlan(model, x), get_backend("aer"), shots=4000, pack=4)
    z = np.abs(got_sampled[0] - alone.outputs) / np.hypot(got_sampled[1], alone.stderr)
    assert z.max() < 5.5  # 100 outputs, each within its (delta-method) shot noise


SHOTS, SAMPLES, HIDDEN = 1000, 100, 15  # round 1: 2 × 15 edges × 100 distinct inputs = 3000 rows, one task each


def test_a_long_local_round_is_cancelled_within_a_chunk(service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """braket:local_dm runs a row per OpenQASM task, 15–40 ms each here: round 1 alone is ≥ 45 s uncancelled.

    Cancelled 5 s after it started, it ends after the chunk running (about QKAN_TASK_SLICE_SECONDS = 2 s): no
    round completes and only the chunks that ran count as shots, fewer than half the round's; the event stream
    told `running` and rows done before the end. How soon it ends is not asserted (no timing assertions in
    tests); the shots used show the round stopped part-way.
    """
    svc, key = service
    with Client(svc.url, key) as qc:
        model_id, _ = upload(qc, make_model(width=[2, HIDDEN, 1], reps=2).float(), tmp_path)
        # one sample first (rounds of 30 and 15 rows, one chunk each): the worker imports the Braket SDK and builds
        # its simulator now, so that the round measured below runs at its own pace from its first chunk on
        warm = qc.submit(model_id, make_inputs(1, 2), backend="braket:local_dm", shots=SHOTS,
                        mitigation="none")
        assert qc.wait(warm.id, timeout=120, progress=False).state == JobState.SUCCEEDED
        job = qc.submit(model_id, make_inputs(SAMPLES, 2, seed=7), backend="braket:local_dm", shots=SHOTS,
                        mitigation="none")
        seen: list[tuple[str, dict[str, Any]]] = []
        reader = threading.Thread(target=all_events, args=(svc.url, key, job.id, seen), daemon=True)
        reader.start()
        while qc.status(job.id).state == JobState.QUEUED:
            time.sleep(0.05)
        time.sleep(5.0)
        asked = time.monotonic()
        qc.cancel(job.id)
        while not (final := qc.status(job.id)).state.terminal:
            assert time.monotonic() - asked < 30, "the cancel did not stop the round"
            time.sleep(0.1)
        reader.join(timeout=30)

    assert final.state == JobState.CANCELLED, final.state
    rows = 2 * HIDDEN * SAMPLES
    assert final.rounds_done == 0 and 0 < final.shots_used < rows * SHOTS / 2
    assert not reader.is_alive() and seen[-1] == ("state", {**seen[-1][1], "state": "cancelled"}), seen
    states = [data["state"] for kind, data in seen if kind == "state"]
    assert "running" in states, seen
    progress = [data for kind, data in seen if kind == "progress"]
    assert len(progress) >= 2, seen  # at least the first, small chunk and one of about 2 s before the cancel
    assert all(p["round"] == 1 and p["rows"] == rows and p["shots_used"] == p["rows_done"] * SHOTS for p in progress)
    assert [p["rows_done"] for p in progress] == sorted({p["rows_done"] for p in progress})
    assert final.shots_used == progress[-1]["shots_used"]  # the chunk that read the flag reported itself
    first, last = (datetime.fromisoformat(p["at"]) for p in (progress[0], progress[-1]))
    pace = (last - first).total_seconds() / (progress[-1]["rows_done"] - progress[0]["rows_done"])
    assert rows * pace >= 30, f"round 1 would take only {rows * pace:.0f} s: not the long round this test needs"
