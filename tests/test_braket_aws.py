"""``braket:<device ARN>`` offline: the exact AWS requests through botocore's Stubber, and a LocalSimulator run.

The Braket client of a real ``AwsSession`` (dummy credentials, no network) is
wrapped by a Stubber: every CreateQuantumTask must match the request we expect
to the last field, and a stubber with nothing queued fails any request we do
not expect — so the refusal tests prove nothing was submitted.
"""

import io
import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from braket.aws import AwsDevice, AwsSession
from braket.device_schema.iqm import IqmDeviceCapabilities
from braket.devices import LocalSimulator
from braket.ir.openqasm import Program
from braket.task_result import (
    AdditionalMetadata,
    GateModelTaskResult,
    ProgramResult,
    ProgramSetExecutableResult,
    ProgramSetTaskMetadata,
    ProgramSetTaskResult,
    TaskMetadata,
)

from conftest import make_inputs, make_model
from qkan_orch.backends.accounts import accounts
from qkan_orch.backends.base import Backend, Handle, ProviderJobFailed, TransientBackendError
from qkan_orch.backends.braket_aws import BraketDeviceBackend
from qkan_orch.backends.exact import exact_p0
from qkan_orch.circuits.batch import ActivationBatch
from qkan_orch.circuits.plan import FeedForwardPlan
from qkan_orch.mitigation import MitigatedBackend, Mitigation, mitigated
from qkan_orch.models.errors import InputError

REGION = "eu-north-1"
ARN = f"arn:aws:braket:{REGION}::device/qpu/iqm/Garnet"
SECRET = "planted-secret-7f3Qz9LmX2vB"
BUCKET, PREFIX = "qkan-test-results", "runs/qkan"
OPS = ["cz", "prx", "h", "x", "y", "z", "rx", "ry", "rz", "cnot", "s", "t"]
UPDATED = "2026-01-02T03:04:05+00:00"

# The stubbed device's calibration (default thresholds: read-out error ≤ 0.03, √X error ≤ 1e-3, T2 ≥ 50 µs).
# Read-out errors 0.001·(1 + 7q mod 19) are distinct, so "best read-out first" has one answer.
READOUT_ERROR = {q: 0.001 * (1 + (7 * q) % 19) for q in range(19)} | {3: 0.05}  # q3 reads out badly
RB_ERROR = {q: 2e-4 for q in range(19)} | {8: 2e-3}  # q8's gates are too poor
T2_US = {q: 80.0 + q for q in range(19)} | {12: 30.0}  # q12 dephases too fast
FAILING = {3, 8, 12}  # and q19, the graph's last qubit, has no calibration at all
PASSING = sorted(set(range(19)) - FAILING, key=lambda q: READOUT_ERROR[q])


def one_qubit(q: int) -> dict[str, Any]:
    """IQM-style v1 entries: T2 in seconds (q7 in µs), RB and simultaneous RB, READOUT."""
    t2 = {"value": 95.0, "standardError": None, "unit": "us"} if q == 7 else \
        {"value": T2_US[q] * 1e-6, "standardError": None, "unit": "S"}
    fidelities = [{"fidelityType": {"name": "READOUT"}, "fidelity": 1 - READOUT_ERROR[q]}]
    if q == 15:  # only simultaneous RB: used as the gate error
        fidelities.append({"fidelityType": {"name": "SIMULTANEOUS_RANDOMIZED_BENCHMARKING"},
                           "fidelity": 1 - RB_ERROR[q]})
    else:  # plain RB is preferred over a (here failing) simultaneous one
        fidelities += [{"fidelityType": {"name": "SIMULTANEOUS_RANDOMIZED_BENCHMARKING"}, "fidelity": 0.99},
                       {"fidelityType": {"name": "RANDOMIZED_BENCHMARKING"}, "fidelity": 1 - RB_ERROR[q]}]
    return {"T1": {"value": 1e-4, "standardError": None, "unit": "S"}, "T2": t2, "oneQubitFidelity": fidelities}


def capabilities(*, program_set: int | None = None, ops: list[str] = OPS, calibrated: bool = False) -> str:
    """A gate-model QPU's deviceCapabilities, validated by the SDK's own IQM schema class."""
    action: dict[str, Any] = {
        "braket.ir.openqasm.program": {
            "version": ["1"], "actionType": "braket.ir.openqasm.program", "supportedOperations": ops,
            "supportedResultTypes": [{"name": "Sample", "observables": ["x", "y", "z", "h", "i"],
                                      "minShots": 1, "maxShots": 20000}],
        },
    }
    if program_set is not None:
        action["braket.ir.openqasm.program_set"] = {
            "version": ["1"], "actionType": "braket.ir.openqasm.program_set",
            "maximumExecutables": program_set, "maximumTotalShots": 200_000,
        }
    caps = IqmDeviceCapabilities.parse_obj({
        "service": {
            "executionWindows": [{"executionDay": "Everyday", "windowStartHour": "00:00",
                                  "windowEndHour": "23:59:59"}],
            "shotsRange": [1, 20000], "updatedAt": UPDATED,
        },
        "action": action,
        "deviceParameters": {},
        "paradigm": {
            "qubitCount": 20, "nativeGateSet": ["cz", "prx"],
            "connectivity": {"fullyConnected": False,
                             "connectivityGraph": {str(q): [str(q + 1)] for q in range(19)}},
        },
        "provider": None,
        "standardized": {"oneQubitProperties": {str(q): one_qubit(q) for q in range(19)},
                         "twoQubitProperties": {}} if calibrated else None,
    })
    return caps.json()


class StubbedSession(AwsSession):
    """Reads results.json through this session's (stubbed) S3 client rather than a fresh boto3 resource."""

    def retrieve_s3_object_body(self, s3_bucket: str, s3_object_key: str) -> str:
        return self.s3_client.get_object(Bucket=s3_bucket, Key=s3_object_key)["Body"].read().decode("utf-8")


class Aws:
    """One backend on a stubbed session, with its Braket and S3 stubbers."""

    def __init__(self, status: str = "ONLINE", program_set: int | None = None, ops: list[str] = OPS,
                 calibrated: bool = False) -> None:
        boto = boto3.Session(aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key=SECRET, region_name=REGION)
        client = boto.client("braket", region_name=REGION)
        self.session = StubbedSession(boto_session=boto, braket_client=client)
        self.braket = Stubber(client)
        self.s3 = Stubber(self.session.s3_client)
        self.braket.add_response("get_device", {
            "deviceArn": ARN, "deviceName": "Garnet", "providerName": "IQM", "deviceType": "QPU",
            "deviceStatus": status,
            "deviceCapabilities": capabilities(program_set=program_set, ops=ops, calibrated=calibrated),
        }, {"deviceArn": ARN})
        self.braket.activate()
        self.s3.activate()
        self.backend = BraketDeviceBackend(ARN, device=AwsDevice(ARN, aws_session=self.session))
        self.braket.assert_no_pending_responses()

    def done(self) -> None:
        self.braket.assert_no_pending_responses()
        self.s3.assert_no_pending_responses()


@pytest.fixture(autouse=True)
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in ("AMZN_BRAKET_TASK_RESULTS_S3_URI", "AMZN_BRAKET_JOB_TOKEN", "AMZN_BRAKET_RESERVATION_DEVICE_ARN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("QKAN_BRAKET_S3_BUCKET", BUCKET)
    monkeypatch.setenv("QKAN_BRAKET_S3_PREFIX", PREFIX)
    accounts.cache_clear()
    yield
    accounts.cache_clear()


def real_batch(samples: int = 3) -> ActivationBatch:
    """The first round of a real model: a QKAN layer's rows, compiled by the planner."""
    model = make_model(width=[2, 3], reps=2, preact_trainable=True)
    plan = FeedForwardPlan(model, make_inputs(samples, 2, seed=5))
    batch = plan.next_batch(plan.initial_state())
    assert batch is not None
    return batch


def expected_rows(batch: ActivationBatch, width: int) -> list[dict[str, float]]:
    """Inputs of each packed circuit, written from the packing rule: row r on copy r % W of circuit r // W."""
    n, p = batch.params.shape
    rows = []
    for k in range(math.ceil(n / width)):
        rows.append({f"p{c}_{j}": float(batch.params[k * width + c, j]) if k * width + c < n else 0.0
                     for c in range(width) for j in range(p)})
    return rows


def expected_source(batch: ActivationBatch, width: int, qubits: list[int] | None = None
                    ) -> tuple[set[str], list[str]]:
    """The OpenQASM program: its input declarations (any order) and its body, from the template's gates.

    Without ``qubits`` copy c is virtual qubit q[c]; with them it is physical qubit $qubits[c], and the
    measurements come in ascending physical order.
    """
    circuit = batch.template.circuit
    declarations = {f"input float p{c}_{j};" for c in range(width) for j in range(circuit.num_params)}
    ref = (lambda c: f"q[{c}]") if qubits is None else (lambda c: f"${qubits[c]}")
    body = ["OPENQASM 3.0;", f"bit[{width}] b;"] + ([f"qubit[{width}] q;"] if qubits is None else [])
    for c in range(width):
        for gate in circuit.gates:
            angle = "" if gate.column is None else f"(p{c}_{gate.column})"
            body.append(f"{gate.name}{angle} {ref(c)};")
    measured = range(width) if qubits is None else sorted(range(width), key=lambda c: qubits[c])
    body += [f"b[{k}] = measure {ref(c)};" for k, c in enumerate(measured)]
    return declarations, body


class OpenQasm:
    """Equals the JSON of an OpenQASM program (or program set) running ``source`` with ``inputs``."""

    def __init__(self, batch: ActivationBatch, width: int, rows: list[dict[str, float]], program_set: bool,
                 qubits: list[int] | None = None) -> None:
        self.declarations, self.body = expected_source(batch, width, qubits)
        self.rows, self.program_set = rows, program_set

    def check(self, program: dict[str, Any]) -> bool:
        lines = program["source"].strip().splitlines()
        declared = {line for line in lines if line.startswith("input ")}
        if declared != self.declarations or [x for x in lines if x not in declared] != self.body:
            return False
        if program["braketSchemaHeader"] != {"name": "braket.ir.openqasm.program", "version": "1"}:
            return False
        if self.program_set:
            return program["inputs"] == {k: [row[k] for row in self.rows] for k in self.rows[0]}
        return len(self.rows) == 1 and program["inputs"] == self.rows[0]

    def __eq__(self, other: object) -> bool:
        action = json.loads(str(other))
        if not self.program_set:
            return self.check(action)
        header = {"name": "braket.ir.openqasm.program_set", "version": "1"}
        return action["braketSchemaHeader"] == header and len(action["programs"]) == 1 and self.check(
            action["programs"][0])

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OpenQasm(rows={self.rows!r}, program_set={self.program_set})"


class Json:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return json.loads(str(other)) == self.value

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Json({self.value!r})"


def device_parameters(width: int, rewiring: bool = True) -> Json:
    """What the SDK sends for a circuit on an IQM device: W qubits, rewiring allowed unless placed."""
    return Json({
        "braketSchemaHeader": {"name": "braket.device_schema.simulators.gate_model_simulator_device_parameters",
                               "version": "1"},
        "paradigmParameters": {"braketSchemaHeader": {"name": "braket.device_schema.gate_model_parameters",
                                                      "version": "1"},
                               "qubitCount": width, "disableQubitRewiring": not rewiring},
    })


def task_arn(k: int) -> str:
    return f"arn:aws:braket:{REGION}:123456789012:quantum-task/0000000{k}-aaaa-bbbb-cccc-dddddddddddd"


def expect_task(aws: Aws, k: int, shots: int, action: object, params: object | None) -> None:
    """Queue one CreateQuantumTask. (The Stubber checks before botocore fills in the idempotent clientToken.)"""
    request: dict[str, Any] = {
        "deviceArn": ARN, "shots": shots, "outputS3Bucket": BUCKET,
        "outputS3KeyPrefix": PREFIX, "action": action,
    }
    if params is not None:
        request["deviceParameters"] = params
    aws.braket.add_response("create_quantum_task", {"quantumTaskArn": task_arn(k)}, request)


# -- 1. the exact CreateQuantumTask requests ---------------------------------------------------


@pytest.mark.parametrize("width", [1, 4])
def test_one_task_per_packed_circuit_with_exact_requests(width: int) -> None:
    aws, batch, shots = Aws(), real_batch(), 1000
    rows = expected_rows(batch, width)
    assert len(rows) == math.ceil(batch.num_rows / width) > 1
    for k, row in enumerate(rows):
        expect_task(aws, k, shots, OpenQasm(batch, width, [row], program_set=False), device_parameters(width))

    handle = aws.backend.submit(batch, shots=shots, pack=width)

    aws.done()
    assert handle.result is None
    assert handle.provider_job_ids == [task_arn(k) for k in range(len(rows))]
    assert handle.data == {"tasks": handle.provider_job_ids, "rows": [batch.num_rows], "width": width,
                           "shots": shots, "program_set": False, "sizes": [1] * len(rows)}
    assert Handle.from_json(json.loads(json.dumps(handle.to_json()))).data == handle.data


def test_program_set_device_gets_one_task_carrying_every_row() -> None:
    aws, batch, shots, width = Aws(program_set=100), real_batch(), 500, 3
    rows = expected_rows(batch, width)
    expect_task(aws, 0, shots * len(rows), OpenQasm(batch, width, rows, program_set=True), None)

    handle = aws.backend.submit(batch, shots=shots, pack=width)

    aws.done()
    assert handle.provider_job_ids == [task_arn(0)]
    assert handle.data["program_set"] is True and handle.data["sizes"] == [len(rows)]
    assert aws.backend.estimate([batch.num_rows], shots, width).tasks == 1


def test_program_set_is_split_only_where_the_executables_limit_demands() -> None:
    aws, batch, shots, width = Aws(program_set=2), real_batch(), 100, 2
    rows = expected_rows(batch, width)
    assert len(rows) == 9
    sizes = [2, 2, 2, 2, 1]
    start = 0
    for k, size in enumerate(sizes):
        chunk = rows[start:start + size]
        start += size
        expect_task(aws, k, shots * size, OpenQasm(batch, width, chunk, program_set=True), None)

    handle = aws.backend.submit(batch, shots=shots, pack=width)

    aws.done()
    assert handle.data["sizes"] == sizes and len(handle.provider_job_ids) == 5
    estimate = aws.backend.estimate([batch.num_rows], shots, width)
    assert (estimate.tasks, estimate.executions, estimate.shots) == (5, 9, 900)
    assert estimate.cost == pytest.approx(5 * 0.30 + 900 * 0.00145)


def test_capabilities_come_from_the_device_properties() -> None:
    caps = Aws().backend.capabilities()
    assert (caps.kind, caps.qubits, caps.max_shots, caps.max_pack) == ("qpu", 20, 20000, 20)
    assert caps.native_gates == ("cz", "prx")
    assert (caps.price.per_task, caps.price.per_shot) == (0.30, 0.00145)


# -- 2. polling --------------------------------------------------------------------------------


def task_metadata(k: int, status: str, shots: int, **extra: Any) -> dict[str, Any]:
    return {"quantumTaskArn": task_arn(k), "status": status, "deviceArn": ARN, "deviceParameters": "{}",
            "shots": shots, "outputS3Bucket": BUCKET, "outputS3Directory": f"{PREFIX}/task-{k}",
            "createdAt": datetime(2026, 1, 1, tzinfo=UTC), **extra}


def expect_state(aws: Aws, k: int, status: str, shots: int, **extra: Any) -> None:
    aws.braket.add_response("get_quantum_task", task_metadata(k, status, shots, **extra),
                            {"quantumTaskArn": task_arn(k), "additionalAttributeNames": ["QueueInfo"]})


def expect_results(aws: Aws, k: int, body: str) -> None:
    data = body.encode()
    aws.s3.add_response("get_object", {"Body": StreamingBody(io.BytesIO(data), len(data))},
                        {"Bucket": BUCKET, "Key": f"{PREFIX}/task-{k}/results.json"})


def shots_with_zeros(zeros: np.ndarray, shots: int, order: list[int], rng: np.random.Generator) -> list[list[int]]:
    """A shots × W bit matrix, columns in ``order``, where qubit q reads 0 exactly zeros[q] times."""
    bits = np.zeros((shots, len(order)), dtype=int)
    for col, qubit in enumerate(order):
        bits[rng.permutation(shots)[: shots - zeros[qubit]], col] = 1
    return bits.tolist()


def complete_tasks(aws, zeros: np.ndarray, shots: int, copies: list[int], measured: list[int],  # type: ignore[no-untyped-def]
                   rng: np.random.Generator) -> None:
    """Stub every task k as COMPLETED with results whose copy ``copies[j]`` read ``zeros[k, copies[j]]`` zeros
    on qubit ``measured[j]``."""
    for k in range(len(zeros)):
        expect_state(aws, k, "COMPLETED", shots)
        result = GateModelTaskResult(
            measurements=shots_with_zeros(zeros[k], shots, copies, rng), measuredQubits=measured,
            taskMetadata=TaskMetadata(id=task_arn(k), shots=shots, deviceId=ARN),
            additionalMetadata=AdditionalMetadata(action=Program(source="OPENQASM 3.0;")))
        expect_results(aws, k, result.json())


def test_poll_returns_the_marginal_p0_of_every_row(rng: np.random.Generator) -> None:
    aws, batch, shots, width = Aws(), real_batch(), 40, 5
    circuits = math.ceil(batch.num_rows / width)
    for k in range(circuits):
        expect_task(aws, k, shots, ANY, ANY)
    handle = aws.backend.submit(batch, shots=shots, pack=width)
    zeros = rng.integers(0, shots + 1, size=(circuits, width))
    order = [3, 0, 4, 1, 2]  # the device may list the measured qubits in any order
    complete_tasks(aws, zeros, shots, order, order, rng)

    result = aws.backend.poll(handle)

    aws.done()
    assert result is not None
    np.testing.assert_array_equal(result.p0, zeros.reshape(-1)[: batch.num_rows] / shots)
    assert result.p0.shape == (batch.num_rows,) and np.all(result.p0_stderr > 0)
    assert (result.shots, result.executions, result.provider_job_ids) == (shots, circuits, handle.provider_job_ids)
    assert result.cost == pytest.approx(circuits * 0.30 + circuits * shots * 0.00145)
    assert result.metadata["pack"] == width and result.metadata["program_set"] is False


def test_poll_reads_a_program_set_result(rng: np.random.Generator) -> None:
    aws, batch, shots, width = Aws(program_set=100), real_batch(), 30, 4
    circuits = math.ceil(batch.num_rows / width)
    expect_task(aws, 0, shots * circuits, ANY, None)
    handle = aws.backend.submit(batch, shots=shots, pack=width)
    zeros = rng.integers(0, shots + 1, size=(circuits, width))
    order = list(range(width))
    result = ProgramSetTaskResult(
        programResults=[ProgramResult(
            executableResults=[ProgramSetExecutableResult(  # listed out of order: inputsIndex says which is which
                inputsIndex=k, measurements=shots_with_zeros(zeros[k], shots, order, rng), measuredQubits=order)
                for k in rng.permutation(circuits).tolist()],
            source=Program(source="OPENQASM 3.0;"), additionalMetadata=AdditionalMetadata())],
        taskMetadata=ProgramSetTaskMetadata(
            id=task_arn(0), deviceId=ARN, requestedShots=shots * circuits, successfulShots=shots * circuits,
            programMetadata=[{"executables": [{}] * circuits}], totalFailedExecutables=0),
    )
    expect_state(aws, 0, "COMPLETED", shots * circuits)
    expect_results(aws, 0, result.json())

    polled = aws.backend.poll(handle)

    aws.done()
    assert polled is not None and polled.metadata["program_set"] is True
    np.testing.assert_array_equal(polled.p0, zeros.reshape(-1)[: batch.num_rows] / shots)
    assert polled.executions == circuits and polled.cost == pytest.approx(0.30 + circuits * shots * 0.00145)


@pytest.mark.parametrize("status", ["CREATED", "QUEUED", "RUNNING"])
def test_poll_of_a_pending_task_returns_none_and_reads_no_results(status: str) -> None:
    aws, batch = Aws(), real_batch()
    for k in range(2):
        expect_task(aws, k, 100, ANY, ANY)
    handle = aws.backend.submit(batch, shots=100, pack=10)
    expect_state(aws, 0, "COMPLETED", 100)
    expect_state(aws, 1, status, 100)
    assert aws.backend.poll(handle) is None
    aws.done()


@pytest.mark.parametrize("status", ["FAILED", "CANCELLED"])
def test_poll_of_an_ended_task_raises_with_its_reason(status: str) -> None:
    aws, batch = Aws(), real_batch()
    expect_task(aws, 0, 100, ANY, ANY)
    handle = aws.backend.submit(batch, shots=100, pack=18)
    expect_state(aws, 0, status, 100, failureReason=f"device calibration aborted; key {SECRET}")
    with pytest.raises(ProviderJobFailed, match=status) as info:
        aws.backend.poll(handle)
    assert "device calibration aborted" in str(info.value) and SECRET not in str(info.value)
    aws.done()


def test_cancel_cancels_every_task() -> None:
    aws, batch = Aws(), real_batch()
    for k in range(2):
        expect_task(aws, k, 100, ANY, ANY)
    handle = aws.backend.submit(batch, shots=100, pack=10)
    for k in range(2):
        aws.braket.add_response("cancel_quantum_task", {"quantumTaskArn": task_arn(k), "cancellationStatus":
                                                        "CANCELLING"}, {"quantumTaskArn": task_arn(k)})
    aws.backend.cancel(handle)
    aws.done()


def test_status_reads_state_and_queue_from_get_device() -> None:
    aws = Aws()
    device = {"deviceArn": ARN, "deviceName": "Garnet", "providerName": "IQM", "deviceType": "QPU",
              "deviceStatus": "OFFLINE", "deviceCapabilities": capabilities()}
    aws.braket.add_response("get_device", device, {"deviceArn": ARN})
    queue = [{"queue": "QUANTUM_TASKS_QUEUE", "queueSize": "7", "queuePriority": "Normal"},
             {"queue": "QUANTUM_TASKS_QUEUE", "queueSize": "2", "queuePriority": "Priority"},
             {"queue": "JOBS_QUEUE", "queueSize": "1"}]
    aws.braket.add_response("get_device", {**device, "deviceQueueInfo": queue}, {"deviceArn": ARN})
    status = aws.backend.status()
    assert (status.online, status.queue_length, status.message) == (False, 9, "OFFLINE")
    with pytest.raises(InputError, match="OFFLINE"):  # the refreshed state now refuses submissions
        aws.backend.submit(real_batch(), shots=100)
    aws.done()


# -- 3. refusals before any request ------------------------------------------------------------


def test_a_malformed_arn_is_refused() -> None:
    for bad in ("arn:aws:braket:eu-north-1::device/qpu/iqm", "iqm/Garnet", "arn:aws:s3:::bucket/key",
                "arn:aws:braket:eu-north-1::device/annealer/dwave/x"):
        with pytest.raises(InputError, match="not an Amazon Braket device ARN") as info:
            BraketDeviceBackend(bad)
        assert info.value.field == "backend"


@pytest.mark.parametrize(
    ("setup", "submit", "field", "message"),
    [
        ({"status": "OFFLINE"}, {"shots": 100}, "backend", "OFFLINE"),
        ({"status": "RETIRED"}, {"shots": 100}, "backend", "RETIRED"),
        ({}, {"shots": 20001}, "shots", "exceeds the maximum of 20000"),
        ({}, {"shots": 100, "pack": 21}, "pack", "1..20"),
        ({}, {"shots": 100, "options": {"verbatim": True}}, "options.verbatim", "not an option"),
        ({}, {"shots": 100, "options": {"program_set": "yes"}}, "options.program_set", "true or false"),
        ({}, {"shots": 100, "pack": "auto"}, "pack", "publishes no calibration; give pack=<W>"),
        ({}, {"shots": 100, "options": {"max_readout_error": -0.1}}, "options.max_readout_error", "non-negative"),
        ({"calibrated": True}, {"shots": 100, "pack": "auto", "options": {"min_t2_us": "long"}},
         "options.min_t2_us", "non-negative"),
        ({"calibrated": True}, {"shots": 100, "pack": 3, "options": {"max_sx_error": True}},
         "options.max_sx_error", "non-negative"),
        ({"calibrated": True}, {"shots": 100, "pack": "auto", "options": {"max_readout_error": 0.0005}},
         "pack", "no qubit"),
        ({"ops": ["cz", "prx", "rz", "x"]}, {"shots": 100}, "backend", "does not support the gates"),
    ],
)
def test_refusals_happen_before_any_submission(setup: dict, submit: dict, field: str, message: str) -> None:
    aws = Aws(**setup)
    with pytest.raises(InputError, match=message) as info:
        aws.backend.submit(real_batch(), **submit)
    assert info.value.field == field
    aws.done()  # no create_quantum_task was queued: any request would have failed the stubber first


def test_a_missing_s3_bucket_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QKAN_BRAKET_S3_BUCKET")
    accounts.cache_clear()
    aws = Aws()
    with pytest.raises(InputError) as info:
        aws.backend.submit(real_batch(), shots=100)
    assert info.value.field == "QKAN_BRAKET_S3_BUCKET"
    with pytest.raises(InputError):
        aws.backend.estimate([10], 100)
    aws.done()


# -- 4. calibrated packing: pack="auto" places the copies on the best qubits ----------------------


def test_auto_pack_chooses_the_qubits_within_the_thresholds_best_read_out_first() -> None:
    aws = Aws(calibrated=True)
    backend = aws.backend
    assert backend.auto_pack({}) == len(PASSING) == 16
    place = backend.placement(16, {})
    assert list(place.qubits) == PASSING and place.calibration_time == UPDATED
    for entry in place.calibration:
        q = entry["qubit"]
        assert entry["readout_error"] == pytest.approx(READOUT_ERROR[q])
        assert entry["sx_error"] == pytest.approx(RB_ERROR[q])  # RB preferred; q15 from simultaneous RB
        assert entry["t2_us"] == pytest.approx(95.0 if q == 7 else T2_US[q])  # seconds and µs both converted
        assert entry["operational"] is True
    # Looser thresholds admit q3, q8 and q12; q19 is never usable: it has no calibration.
    assert backend.auto_pack({"max_readout_error": 0.1, "max_sx_error": 0.01, "min_t2_us": 10}) == 19
    assert backend.auto_pack({"min_t2_us": 0}) == 17
    with pytest.raises(InputError, match="16 of 20 pass") as info:  # q19 counts, but as uncalibrated
        backend.placement(17, {})
    assert info.value.field == "pack"
    aws.braket.add_response("get_device", {  # status() asks afresh
        "deviceArn": ARN, "deviceName": "Garnet", "providerName": "IQM", "deviceType": "QPU",
        "deviceStatus": "ONLINE", "deviceCapabilities": capabilities(calibrated=True)}, {"deviceArn": ARN})
    assert backend.status().calibration_time == UPDATED  # IQM's v1 table has no time: the document's
    aws.done()


def test_auto_pack_is_capped_by_the_max_width_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QKAN_PACK_MAX_WIDTH", "5")
    accounts.cache_clear()
    backend = Aws(calibrated=True).backend
    assert backend.auto_pack({}) == 5
    assert list(backend.placement(5, {}).qubits) == PASSING[:5]


@pytest.mark.parametrize("program_set", [None, 100])
def test_auto_pack_sends_the_copies_to_the_chosen_physical_qubits(program_set: int | None) -> None:
    aws, batch, shots = Aws(calibrated=True, program_set=program_set), real_batch(), 200
    width = len(PASSING)
    assert batch.num_rows > width
    rows = expected_rows(batch, width)
    # One task per circuit even where program sets are accepted: only a circuit task can disable rewiring.
    for k, row in enumerate(rows):
        expect_task(aws, k, shots, OpenQasm(batch, width, [row], program_set=False, qubits=PASSING),
                    device_parameters(width, rewiring=False))

    handle = aws.backend.submit(batch, shots=shots, pack="auto")

    aws.done()
    place = handle.data["placement"]
    assert place["qubits"] == PASSING and place["calibration_time"] == UPDATED
    assert [c["qubit"] for c in place["calibration"]] == PASSING
    assert handle.data["width"] == width and handle.data["program_set"] is False
    assert Handle.from_json(json.loads(json.dumps(handle.to_json()))).data == handle.data
    assert aws.backend.estimate([batch.num_rows], shots, "auto").tasks == len(rows)


def test_auto_pack_never_uses_more_copies_than_rows() -> None:
    aws, batch, shots = Aws(calibrated=True), real_batch(1), 100
    assert batch.num_rows < len(PASSING)
    width = batch.num_rows
    expect_task(aws, 0, shots, OpenQasm(batch, width, expected_rows(batch, width), program_set=False,
                                        qubits=PASSING[:width]), device_parameters(width, rewiring=False))
    handle = aws.backend.submit(batch, shots=shots, pack="auto")
    aws.done()
    assert handle.data["width"] == width and handle.data["placement"]["qubits"] == PASSING[:width]


def test_poll_maps_the_measured_physical_qubits_back_to_copies(monkeypatch: pytest.MonkeyPatch,
                                                               rng: np.random.Generator) -> None:
    monkeypatch.setenv("QKAN_PACK_MAX_WIDTH", "5")
    accounts.cache_clear()
    aws, batch, shots, width = Aws(calibrated=True), real_batch(), 40, 5
    qubits = PASSING[:width]
    circuits = math.ceil(batch.num_rows / width)
    for k in range(circuits):
        expect_task(aws, k, shots, ANY, ANY)
    handle = aws.backend.submit(batch, shots=shots, pack="auto")
    zeros = rng.integers(0, shots + 1, size=(circuits, width))
    copies = [3, 0, 4, 1, 2]  # listed out of order, by physical index
    complete_tasks(aws, zeros, shots, copies, [qubits[c] for c in copies], rng)

    result = aws.backend.poll(handle)

    aws.done()
    assert result is not None
    np.testing.assert_array_equal(result.p0, zeros.reshape(-1)[: batch.num_rows] / shots)
    assert result.metadata["pack"] == width and result.metadata["placement"] == handle.data["placement"]
    assert result.metadata["placement"]["qubits"] == qubits


def test_poll_refuses_a_result_measured_on_other_qubits() -> None:
    aws, batch, shots = Aws(calibrated=True), real_batch(1), 10
    expect_task(aws, 0, shots, ANY, ANY)
    handle = aws.backend.submit(batch, shots=shots, pack="auto")
    width = handle.data["width"]
    expect_state(aws, 0, "COMPLETED", shots)
    result = GateModelTaskResult(  # qubits 0..W−1: what a rewired run would report
        measurements=[[0] * width] * shots, measuredQubits=list(range(width)),
        taskMetadata=TaskMetadata(id=task_arn(0), shots=shots, deviceId=ARN),
        additionalMetadata=AdditionalMetadata(action=Program(source="OPENQASM 3.0;")))
    expect_results(aws, 0, result.json())
    with pytest.raises(ProviderJobFailed, match="expected 10 shots on qubits"):
        aws.backend.poll(handle)
    aws.done()


def test_explicit_pack_on_a_calibrated_device_keeps_qubits_0_to_w_and_rewiring() -> None:
    aws, batch, shots, width = Aws(calibrated=True), real_batch(), 100, 10
    rows = expected_rows(batch, width)
    for k, row in enumerate(rows):
        expect_task(aws, k, shots, OpenQasm(batch, width, [row], program_set=False), device_parameters(width))
    handle = aws.backend.submit(batch, shots=shots, pack=width)
    aws.done()
    assert "placement" not in handle.data


# -- 5. the same class on Braket's local simulator ---------------------------------------------


@pytest.mark.parametrize(("pack", "program_set"), [(1, True), (5, True), (5, False)])
def test_local_simulator_runs_through_the_same_code(pack: int, program_set: bool) -> None:
    backend = BraketDeviceBackend("arn:aws:braket:::device/quantum-simulator/amazon/sv1", device=LocalSimulator())
    batch, shots = real_batch(4), 2000
    handle = backend.submit(batch, shots=shots, pack=pack, options={"program_set": program_set})
    assert handle.result is not None and handle.provider_job_ids == []
    result = backend.poll(handle)
    assert result is handle.result
    p = exact_p0(batch)
    sigma = np.sqrt(p * (1 - p) / shots)
    ok = np.abs(result.p0 - p) <= 5 * sigma + 1.0 / shots
    assert ok.all(), f"rows {np.flatnonzero(~ok)} outside 5σ"
    assert result.executions == math.ceil(batch.num_rows / pack) and result.cost == 0.0
    assert result.metadata["program_set"] is program_set
    assert result.metadata["tasks"] == (1 if program_set else result.executions)
    assert backend.status().online


def test_local_simulator_refuses_auto_pack() -> None:
    backend = BraketDeviceBackend("arn:aws:braket:::device/quantum-simulator/amazon/sv1", device=LocalSimulator())
    with pytest.raises(InputError, match="publishes no calibration") as info:
        backend.submit(real_batch(), shots=100, pack="auto")
    assert info.value.field == "pack"


# -- 6. secrets never reach a message ----------------------------------------------------------


def test_aws_errors_are_classified_and_never_carry_the_secret() -> None:
    batch = real_batch()
    cases = [
        ("ThrottlingException", TransientBackendError),
        ("InternalServiceException", TransientBackendError),
        ("AccessDeniedException", TransientBackendError),
        ("ValidationException", InputError),
        ("DeviceOfflineException", InputError),
    ]
    for code, kind in cases:
        aws = Aws()
        aws.braket.add_client_error("create_quantum_task", code, f"request signed with {SECRET} refused",
                                    http_status_code=400)
        with pytest.raises(kind) as info:
            aws.backend.submit(batch, shots=100, pack=20)
        assert code in str(info.value) and SECRET not in str(info.value)
        assert info.value.__cause__ is None and info.value.__suppress_context__
        aws.done()


def test_a_failure_mid_round_cancels_the_tasks_already_created() -> None:
    aws, batch = Aws(), real_batch()
    expect_task(aws, 0, 100, ANY, ANY)
    aws.braket.add_client_error("create_quantum_task", "ServiceQuotaExceededException", f"quota {SECRET}")
    aws.braket.add_response("cancel_quantum_task", {"quantumTaskArn": task_arn(0), "cancellationStatus":
                                                    "CANCELLING"}, {"quantumTaskArn": task_arn(0)})
    with pytest.raises(TransientBackendError) as info:
        aws.backend.submit(batch, shots=100, pack=10)
    assert SECRET not in str(info.value)
    aws.done()


# -- 7. mitigated rounds: every scale factor and the read-out calibration in one submission ----------

SCALES = (1, 3, 5)  # readout+zne's default scale factors
HEADER = ("OPENQASM", "bit[", "qubit[")


class Captured:
    """Matches any value of a request field and keeps it, JSON-decoded, for the test to take apart."""

    def __init__(self) -> None:
        self.value: Any = None

    def __eq__(self, other: object) -> bool:
        self.value = json.loads(str(other))
        return True

    __hash__ = None  # type: ignore[assignment]


def mitigated_device(aws: Aws, calibration_shots: int) -> Backend:
    settings = {"method": "readout+zne", "calibration_shots": calibration_shots}
    backend = mitigated(aws.backend, Mitigation.parse(settings, aws.backend.capabilities()))
    assert isinstance(backend, MitigatedBackend)
    return backend


def program_lines(program: dict[str, Any]) -> tuple[set[str], list[str]]:
    """A sent program's input declarations (any order) and the rest of its source."""
    lines = program["source"].strip().splitlines()
    declared = {line for line in lines if line.startswith("input ")}
    return declared, [line for line in lines if line not in declared]


def gate_count(body: list[str]) -> int:
    return sum(not line.startswith((*HEADER, "barrier")) and " = measure " not in line for line in body)


def folded_source(batch: ActivationBatch, width: int, scale: int, qubits: list[int] | None = None
                  ) -> tuple[set[str], list[str]]:
    """``expected_source`` at scale factor ``scale``: every gate G written G(G†G)^k (a rotation's inverse
    negates its angle, h is its own), each followed by a barrier on its qubit, at scale 1 too (fenced)."""
    declarations, body = expected_source(batch, width, qubits)
    head = [line for line in body if line.startswith(HEADER)]
    measures = [line for line in body if " = measure " in line]
    gates = body[len(head):len(body) - len(measures)]
    folded = [line for gate in gates for k in range(scale)
              for line in (gate.replace("(p", "(-p") if k % 2 else gate, f"barrier {gate.split()[-1]}")]
    return declarations, head + folded + measures


def check_calibration(program: dict[str, Any], bit: int, width: int, qubits: list[int] | None = None,
                      identity: bool = True) -> None:
    """|bit⟩ prepared on every copy's qubit (``x``; ``i``, or nothing without it, for |0⟩), all of them
    measured, no inputs."""
    ref = (lambda c: f"q[{c}]") if qubits is None else (lambda c: f"${qubits[c]}")
    declared, body = program_lines(program)
    assert not declared and program["inputs"] == {}
    head = ["OPENQASM 3.0;", f"bit[{width}] b;"] + ([f"qubit[{width}] q;"] if qubits is None else [])
    gate = "x" if bit else "i" if identity else None
    gates = [f"{gate} {ref(c)};" for c in range(width)] if gate else []
    assert body[:len(head) + len(gates)] == head + gates, program["source"]
    measures = [line.split(" = measure ") for line in body[len(head) + len(gates):]]
    assert [b for b, _ in measures] == [f"b[{j}]" for j in range(width)]
    assert sorted(q for _, q in measures) == sorted(f"{ref(c)};" for c in range(width))


def test_a_mitigated_round_on_a_program_set_device_is_one_task_scales_then_calibration() -> None:
    aws, batch, shots, width = Aws(program_set=100, ops=[*OPS, "i"]), real_batch(1), 100, 2
    rows = expected_rows(batch, width)
    repeats = 2  # calibration_shots 200 at 100 shots: ⌈200/100⌉ circuits per preparation
    executables = len(SCALES) * len(rows) + 2 * repeats
    action = Captured()
    expect_task(aws, 0, shots * executables, action, None)
    backend = mitigated_device(aws, 2 * shots)

    handle = backend.submit(batch, shots=shots, pack=width)

    aws.done()
    assert action.value["braketSchemaHeader"] == {"name": "braket.ir.openqasm.program_set", "version": "1"}
    programs = action.value["programs"]
    assert len(programs) == len(SCALES) + 2 * repeats  # one binding per scale, one program per calibration
    for scale, program in zip(SCALES, programs, strict=False):
        assert program_lines(program) == folded_source(batch, width, scale), f"scale {scale}"
        assert program["inputs"] == {name: [row[name] for row in rows] for name in rows[0]}
    gates = [gate_count(program_lines(p)[1]) for p in programs[:len(SCALES)]]
    assert gates == [scale * gates[0] for scale in SCALES]  # λ times the gates of scale 1
    for bit, program in zip([0] * repeats + [1] * repeats, programs[len(SCALES):], strict=True):
        check_calibration(program, bit, width)
    assert handle.data["mitigation"] == {"rows": batch.num_rows, "width": width, "scale_factors": list(SCALES),
                                         "repeats": repeats}
    assert handle.data["rows"] == [batch.num_rows] * len(SCALES) + [repeats * width] * 2
    assert handle.data["program_set"] is True and handle.data["sizes"] == [executables]
    estimate = backend.estimate([batch.num_rows], shots, width)
    assert (estimate.tasks, estimate.executions, estimate.shots) == (1, executables, executables * shots)


@pytest.mark.parametrize("placed", [False, True])
def test_a_mitigated_round_without_program_sets_is_one_task_per_executable(placed: bool) -> None:
    """A device without program sets (and without ``i``: |0⟩ is measured only), and a placed round, whose
    tasks go one by one even where program sets are offered, on the chosen physical qubits."""
    aws = Aws(program_set=100, ops=[*OPS, "i"], calibrated=True) if placed else Aws()
    batch, shots, repeats = real_batch(1), 100, 2
    width = batch.num_rows if placed else 2  # pack="auto" never uses more copies than rows
    qubits = PASSING[:width] if placed else None
    rows = expected_rows(batch, width)
    executables = len(SCALES) * len(rows) + 2 * repeats
    actions = [Captured() for _ in range(executables)]
    for k, action in enumerate(actions):
        expect_task(aws, k, shots, action, device_parameters(width, rewiring=not placed))

    handle = mitigated_device(aws, 2 * shots).submit(batch, shots=shots, pack="auto" if placed else width)

    aws.done()
    programs = [a.value for a in actions]
    assert all(p["braketSchemaHeader"] == {"name": "braket.ir.openqasm.program", "version": "1"} for p in programs)
    for s, scale in enumerate(SCALES):
        for k, row in enumerate(rows):
            program = programs[s * len(rows) + k]
            assert program_lines(program) == folded_source(batch, width, scale, qubits), f"scale {scale}"
            assert program["inputs"] == row
    gates = [gate_count(program_lines(programs[s * len(rows)])[1]) for s in range(len(SCALES))]
    assert gates == [scale * gates[0] for scale in SCALES]
    for bit, program in zip([0] * repeats + [1] * repeats, programs[len(SCALES) * len(rows):], strict=True):
        check_calibration(program, bit, width, qubits, identity=placed)
    assert handle.data["program_set"] is False and handle.data["sizes"] == [1] * executables
    assert handle.data["mitigation"]["repeats"] == repeats
    if placed:
        assert handle.data["placement"]["qubits"] == qubits


def program_set_result(zeros: np.ndarray, shots: int, executables: list[int], rng: np.random.Generator) -> str:
    """results.json of one program-set task whose program p has ``executables[p]`` executables; executable j
    overall reads ``zeros[j, w]`` zeros on copy w."""
    order = list(range(zeros.shape[1]))
    programs, start = [], 0
    for count in executables:
        programs.append(ProgramResult(
            executableResults=[ProgramSetExecutableResult(
                inputsIndex=j, measurements=shots_with_zeros(zeros[start + j], shots, order, rng),
                measuredQubits=order) for j in range(count)],
            source=Program(source="OPENQASM 3.0;"), additionalMetadata=AdditionalMetadata()))
        start += count
    return ProgramSetTaskResult(
        programResults=programs,
        taskMetadata=ProgramSetTaskMetadata(
            id=task_arn(0), deviceId=ARN, requestedShots=shots * start, successfulShots=shots * start,
            programMetadata=[{"executables": [{}] * count} for count in executables], totalFailedExecutables=0),
    ).json()


@pytest.mark.parametrize("program_set", [True, False])
def test_poll_of_a_mitigated_round_corrects_and_extrapolates_every_row(program_set: bool,
                                                                       rng: np.random.Generator) -> None:
    """Counts chosen so the answer is exact: zeros linear in λ extrapolate to their λ = 0 value m₀, and
    read-out correction gives (m₀/shots − e1) / (1 − e0 − e1) with each copy's calibrated e0, e1."""
    aws = Aws(program_set=100 if program_set else None, ops=[*OPS, "i"])
    batch, shots, width, repeats = real_batch(1), 100, 2, 2
    backend = mitigated_device(aws, 2 * shots)
    circuits = math.ceil(batch.num_rows / width)
    executables = len(SCALES) * circuits + 2 * repeats
    for k in range(1 if program_set else executables):
        expect_task(aws, k, shots * executables if program_set else shots, ANY, None if program_set else ANY)
    handle = backend.submit(batch, shots=shots, pack=width)
    assert handle.result is None and "mitigation" in handle.data  # pending: the layout rides on the handle
    expect_state(aws, 0, "RUNNING", shots)
    assert backend.poll(handle) is None
    handle = Handle.from_json(json.loads(json.dumps(handle.to_json())))  # as a restarted worker reads it

    start, step = np.array([70, 60, 55, 80, 65, 50]), np.array([3, 2, 1, 4, 0, 2])
    assert start.size == batch.num_rows
    measured = {scale: start - step * scale for scale in SCALES}  # zeros read at λ
    prepared_0 = np.array([[98, 97], [98, 95]])  # zeros read after preparing |0⟩, per calibration circuit
    prepared_1 = np.array([[5, 3], [7, 3]])  # and after |1⟩
    zeros = np.vstack([*(measured[s].reshape(circuits, width) for s in SCALES), prepared_0, prepared_1])
    if program_set:
        expect_state(aws, 0, "COMPLETED", shots * executables)
        expect_results(aws, 0, program_set_result(zeros, shots, [circuits] * len(SCALES) + [1] * 2 * repeats,
                                                  rng))
    else:
        complete_tasks(aws, zeros, shots, list(range(width)), list(range(width)), rng)

    result = backend.poll(handle)

    aws.done()
    assert result is not None and result.raw_p0 is not None and result.raw_p0_stderr is not None
    e0, e1 = 1 - prepared_0.mean(axis=0) / shots, prepared_1.mean(axis=0) / shots
    copy = np.arange(batch.num_rows) % width
    want = (start / shots - e1[copy]) / (1 - e0[copy] - e1[copy])
    assert result.p0.shape == result.raw_p0.shape == (batch.num_rows,)
    np.testing.assert_allclose(result.p0, want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(result.raw_p0, measured[1] / shots)  # scale 1 as read
    assert np.all(result.p0_stderr > result.raw_p0_stderr) and np.all(result.raw_p0_stderr > 0)
    summary = result.metadata["mitigation"]
    assert (summary["method"], summary["scale_factors"], summary["calibration_shots"]) == (
        "readout+zne", list(SCALES), 2 * shots)
    for w, entry in enumerate(summary["readout"]):
        np.testing.assert_allclose(entry["matrix"], [[1 - e0[w], e1[w]], [e0[w], 1 - e1[w]]], rtol=0, atol=1e-12)
        assert entry["shots"] == repeats * shots
    assert result.executions == executables and result.shots == shots


def test_a_mitigated_round_on_the_local_simulator_reduces_inside_submit() -> None:
    """Ideal read-out: every calibration circuit reads its bit exactly, so the correction is the identity."""
    device = BraketDeviceBackend("arn:aws:braket:::device/quantum-simulator/amazon/sv1", device=LocalSimulator())
    backend = mitigated(device, Mitigation.parse("readout", device.capabilities()))
    batch = real_batch(2)
    handle = backend.submit(batch, shots=500, pack=3)
    assert handle.result is not None and "mitigation" not in handle.data
    result = backend.poll(handle)
    assert result is handle.result and result.raw_p0 is not None
    np.testing.assert_array_equal(result.p0, result.raw_p0)
    assert [entry["matrix"] for entry in result.metadata["mitigation"]["readout"]] == [[[1.0, 0.0], [0.0, 1.0]]] * 3
    assert result.metadata["program_set"] is True and result.metadata["tasks"] == 1
