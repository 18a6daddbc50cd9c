"""The client's records mirror the API's response schemas, and parse what a server sends (older or newer)."""

import json
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import fields
from datetime import UTC, datetime

import pytest

from qkan_orch.client import (
    Agreement,
    ApiError,
    Backend,
    Client,
    Compared,
    Comparison,
    EdgeError,
    Estimate,
    Job,
    JobError,
    JobResult,
    JobState,
    LayerAgreement,
    Model,
    Page,
    Queues,
    Quote,
    Round,
)
from qkan_orch.client.responses import Queue, Worker
from qkan_orch.service.api import schemas

PAIRS = [
    (Model, schemas.ModelOut), (Round, schemas.RoundOut), (JobError, schemas.JobError),
    (Estimate, schemas.EstimateOut), (Job, schemas.JobOut), (JobResult, schemas.JobResultOut),
    (Backend, schemas.BackendOut), (Queue, schemas.QueueOut), (Worker, schemas.WorkerOut),
    (Queues, schemas.QueuesOut), (Quote, schemas.QuoteOut), (Agreement, schemas.AgreementOut),
    (Compared, schemas.ComparedOut), (Comparison, schemas.ComparisonOut), (EdgeError, schemas.EdgeErrorOut),
    (LayerAgreement, schemas.LayerAgreementOut),
]

JOB = {
    "id": "j1", "kind": "inference", "model_id": "m1", "backend": "aer", "queue": "local", "state": "succeeded",
    "rounds_done": 1, "rounds_total": 1, "samples": 2, "shots": 100, "pack": "auto", "options": {"seed": 1},
    "estimate": {"tasks": 1, "executions": 2, "shots": 200, "qpu_seconds": 0.0, "cost": 0.0},
    "placement": None, "qpu_seconds": 0.0, "cost": 0.0, "shots_used": 200, "executions": 2,
    "provider_job_ids": ["p1"], "created_at": "2030-01-02T03:04:05.5Z", "started_at": "2030-01-02T03:04:06",
    "finished_at": None, "queued_seconds": 0.5, "run_seconds": None, "error": None,
    "rounds": [{"number": 0, "rows": 2, "requested": 4, "executions": 2, "shots": 100, "provider_job_ids": ["p1"],
                "submitted_at": "2030-01-02T03:04:06+00:00", "finished_at": None, "seconds": None}],
}


@pytest.mark.parametrize(("record", "schema"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_each_record_has_its_schemas_fields_in_its_order(record: type, schema: type) -> None:
    assert [f.name for f in fields(record)] == list(schema.model_fields)


def test_a_job_parses_into_typed_fields() -> None:
    job = Job.from_json(JOB)
    assert job.state is JobState.SUCCEEDED and job.state.terminal and job.pack == "auto"
    assert job.estimate == Estimate(tasks=1, executions=2, shots=200, qpu_seconds=0.0, cost=0.0)
    assert job.created_at == datetime(2030, 1, 2, 3, 4, 5, 500_000, tzinfo=UTC)
    assert job.started_at == datetime(2030, 1, 2, 3, 4, 6, tzinfo=UTC)  # SQLite's zoneless timestamps are UTC
    assert [r.number for r in job.rounds] == [0] and job.rounds[0].submitted_at.tzinfo is UTC


def test_newer_servers_extra_fields_are_ignored_and_missing_optional_ones_default() -> None:
    newer = Job.from_json({**JOB, "comparison": {"kind": "hardware"}, "rounds": [{**JOB["rounds"][0], "noise": 0.1}]})
    assert newer == Job.from_json(JOB)
    older = {k: v for k, v in JOB.items() if k not in ("estimate", "placement", "error", "rounds", "pack")}
    job = Job.from_json(older)
    assert job.estimate is None and job.error is None and job.rounds == [] and job.pack is None


def test_a_page_holds_records_of_its_item_type() -> None:
    page = Page.from_json({"items": [JOB, JOB], "total": 7, "limit": 2, "offset": 4}, Job.from_json)
    assert (page.total, page.limit, page.offset) == (7, 2, 4) and all(isinstance(j, Job) for j in page.items)


def test_importing_the_client_loads_no_service_or_quantum_stack() -> None:
    heavy = ("torch", "sqlalchemy", "fastapi", "pydantic", "qiskit", "celery")
    code = f"import sys, qkan_orch.client; print([m for m in {heavy!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


class ResettingServer(threading.Thread):
    """A loopback HTTP server that resets the first connection after reading its request (a keep-alive connection
    closed under the client) and answers every later one with ``body``."""

    def __init__(self, body: bytes) -> None:
        super().__init__(daemon=True)
        self.body, self.connections = body, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def run(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:  # closed by the test
                return
            with connection:
                self.connections += 1
                connection.recv(65536)
                if self.connections == 1:  # SO_LINGER 0: close sends RST, as a server closing mid-request does
                    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    continue
                connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                   b"Content-Length: %d\r\n\r\n" % len(self.body) + self.body)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_reset_connection_is_retried_once_for_a_get_and_never_for_a_change(method: str) -> None:
    server = ResettingServer(json.dumps(JOB).encode())
    server.start()
    try:
        with Client(server.url, "key") as qc:
            if method == "GET":
                assert qc.status("j1").id == "j1"
                assert server.connections == 2
            else:
                with pytest.raises(ApiError) as refused:
                    qc.cancel("j1")
                assert refused.value.code == "unreachable" and server.connections == 1
    finally:
        server.listener.close()
