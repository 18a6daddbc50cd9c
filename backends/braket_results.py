"""Amazon Braket task results → counts per packed circuit, whatever the device returned.

A task's results.json holds either one circuit's result or a program set's,
whose parts may be stored as files of their own beside it; devices report
either the shots or their probabilities. A LocalSimulator returns the SDK's
result objects instead. All of them become the same ``Counts``, which
``BraketDeviceBackend`` maps back to copies by measured qubit.
"""

from typing import Any

import numpy as np
from braket.aws import AwsQuantumTask, AwsSession
from braket.schema_common import BraketSchemaBase
from braket.task_result import GateModelTaskResult, ProgramSetExecutableResult, ProgramSetTaskResult
from braket.tasks.program_set_quantum_task_result import ProgramSetQuantumTaskResult

from qkan_orch.backends.accounts import redact
from qkan_orch.backends.base import ProviderJobFailed

# Per packed circuit: ones per measured qubit, the measured qubits (in that order), shots read.
Counts = tuple[np.ndarray, list[int], int]


def _counts(measurements: Any, probabilities: dict[str, float] | None, qubits: Any, shots: int) -> Counts:
    """Marginal ones of one circuit's result; devices return either the shots or their probabilities."""
    measured = [int(q) for q in qubits or []]
    if measurements is not None and len(measurements):
        bits = np.asarray(measurements, dtype=np.int64)
        return bits.sum(axis=0), measured, int(bits.shape[0])
    if probabilities:
        ones = sum(p * np.array([b == "1" for b in key], dtype=np.float64) for key, p in probabilities.items())
        return np.rint(np.asarray(ones) * shots).astype(np.int64), measured, shots
    raise ProviderJobFailed("Amazon Braket returned a result without measurements")


def task_counts(session: AwsSession, meta: dict[str, Any]) -> list[Counts]:
    """Read a finished task's results.json (and a program set's parts) from S3 through the task's session."""
    bucket, folder = meta["outputS3Bucket"], meta["outputS3Directory"]
    shots = int(meta["shots"])
    result = BraketSchemaBase.parse_raw_schema(
        session.retrieve_s3_object_body(bucket, f"{folder}/{AwsQuantumTask.RESULTS_FILENAME}"))
    if isinstance(result, GateModelTaskResult):
        return [_counts(result.measurements, result.measurementProbabilities, result.measuredQubits, shots)]
    if not isinstance(result, ProgramSetTaskResult):
        raise ProviderJobFailed(f"Amazon Braket returned an unexpected result type {type(result).__name__}")
    where = result.s3Location

    def load(part: Any) -> Any:  # program sets may store their parts as paths relative to s3Location
        if isinstance(part, str) and where:
            return BraketSchemaBase.parse_raw_schema(session.retrieve_s3_object_body(where[0], f"{where[1]}/{part}"))
        return part

    executables = [e for program in result.programResults  # programs in order, each's executables by input
                   for e in sorted((load(x) for x in load(program).executableResults),
                                   key=lambda x: getattr(x, "inputsIndex", 0) or 0)]
    failed = [e for e in executables if not isinstance(e, ProgramSetExecutableResult)]
    if failed:
        raise ProviderJobFailed(redact(f"Amazon Braket program set task {meta.get('quantumTaskArn')}: "
                                       f"{len(failed)} executables failed: {failed[0]}"))
    per_circuit = shots // max(1, len(executables))
    return [_counts(e.measurements, e.measurementProbabilities, e.measuredQubits, per_circuit) for e in executables]


def local_counts(result: Any) -> list[Counts]:
    """The same from the SDK result objects a LocalSimulator task returns (executables already in order)."""
    entries = ([e for program in result.entries for e in program.entries]
               if isinstance(result, ProgramSetQuantumTaskResult) else [result])
    return [_counts(e.measurements, None, e.measured_qubits, 0) for e in entries]
