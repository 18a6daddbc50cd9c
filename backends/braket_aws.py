"""``braket:<device ARN>``: Amazon Braket devices (QPUs and on-demand simulators).

``submit`` creates quantum tasks and returns their ARNs at once; ``poll`` asks
their state and never waits; ``cancel`` cancels them. Where the device accepts
program sets (action ``braket.ir.openqasm.program_set``) one task carries every
packed circuit of a round as one CircuitBinding of the FreeParameter template,
so the round pays one per-task fee; it is split into several tasks only where
the device's ``maximumExecutables`` / ``maximumTotalShots`` demand it. Other
devices get one task per packed circuit, created with ``device.run`` in a loop:
``run_batch`` is avoided because ``AwsQuantumTaskBatch`` copies the session and
blocks until earlier tasks *finish* when a round has more circuits than
``max_parallel``.

Programs are sent non-verbatim: Braket compiles h/x/z/rz/ry to the device's
natives. With an integer ``pack`` the W copies sit on qubits 0..W−1 and Braket
places them itself (qubit rewiring allowed). With ``pack="auto"`` we place them
from the device's calibration (``braket_calibration``): copy w runs on physical
qubit ``qubits[w]`` with rewiring disabled (``braket_programs``), and the
placement is recorded on the handle and the result as for IBM. A program-set
request carries no device parameters, so it cannot disable rewiring: placed
rounds go as one task per packed circuit. Devices without a standardized
calibration (and the LocalSimulator) refuse ``pack="auto"``. Verbatim boxes are
not implemented (they would need the template rewritten in each device's native
gates); ``submit`` refuses a device whose OpenQASM action lacks a gate the
template uses. Task results become counts in ``braket_results``.

A ``braket.devices.LocalSimulator`` passed as ``device`` runs this very code
offline; its tasks finish inside ``submit``, so the handle carries the result.
"""

import math
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from braket.aws import AwsDevice, AwsQuantumTask, AwsSession
from braket.circuits import Circuit
from braket.devices import Device, LocalSimulator
from braket.program_sets import ProgramSet
from braket.tasks.local_quantum_task import LocalQuantumTask

from qkan_orch.backends.accounts import accounts, redact
from qkan_orch.backends.base import (
    Capabilities,
    Handle,
    Pack,
    Price,
    ProviderJobFailed,
    ProviderJobLost,
    Status,
    TransientBackendError,
)
from qkan_orch.backends.braket_calibration import braket_calibration, braket_calibration_time
from qkan_orch.backends.braket_programs import placed_template, program_bindings
from qkan_orch.backends.braket_results import Counts, local_counts, task_counts
from qkan_orch.backends.calibration import CalibratedBackend, Placement, counts_result, part_rows
from qkan_orch.backends.pricing import braket_price
from qkan_orch.circuits.batch import ActivationBatch, BatchResult, Parts, Template, parts_of
from qkan_orch.circuits.lower_braket import braket_inputs, braket_template, measure_only
from qkan_orch.circuits.packing import pack_params
from qkan_orch.models.errors import InputError

ARN = re.compile(
    r"arn:aws:braket:(?P<region>[a-z0-9-]*)::device/(?P<kind>qpu|quantum-simulator)/"
    r"(?P<provider>[A-Za-z0-9_.-]+)/(?P<device>[A-Za-z0-9_.-]+)"
)
OPENQASM = "braket.ir.openqasm.program"
PROGRAM_SET = "braket.ir.openqasm.program_set"
OPTIONS = ("program_set", "max_readout_error", "max_sx_error", "min_t2_us")
ENDED = {"FAILED", "CANCELLING", "CANCELLED"}
# Codes that mean the request itself is wrong (unknown device, program the device refuses): user errors.
USER_ERROR_CODES = {"ResourceNotFoundException", "ValidationException", "DeviceOfflineException",
                    "DeviceRetiredException"}
METADATA_TTL = 60.0  # seconds a GetDevice answer is trusted for the offline check
SIMULATOR_MIN_SECONDS = 3.0  # on-demand simulators bill at least 3 s per task


class BraketDeviceBackend(CalibratedBackend):
    def __init__(self, arn: str, device: Device | None = None) -> None:
        match = ARN.fullmatch(arn) if isinstance(arn, str) else None
        if match is None:
            raise InputError("backend", f"{str(arn)[:200]!r} is not an Amazon Braket device ARN "
                             "(arn:aws:braket:<region>::device/qpu/<provider>/<device>)")
        self.arn = arn
        self.name = f"braket:{arn}"
        self.region = match["region"]
        self.simulator = match["kind"] == "quantum-simulator"
        self.device_path = f"{match['provider']}/{match['device']}"
        self._device = device
        self._fetched = time.monotonic()

    # -- the device ------------------------------------------------------------------------------

    @property
    def device(self) -> Device:
        """The AwsDevice, created on first use (one GetDevice call) unless one was injected."""
        if self._device is None:
            if not accounts().braket_s3_bucket:  # before AWS is asked: no account is a setting, not an outage
                raise InputError("QKAN_BRAKET_S3_BUCKET", f"set an S3 bucket for the results of '{self.name}' "
                                 "(and AWS credentials); POST /v1/estimate quotes it without")
            with self._aws("GetDevice"):
                try:
                    session = AwsSession(boto3.Session(region_name=self.region or None))
                    self._device = AwsDevice(self.arn, aws_session=session)
                except ValueError as exc:  # AwsDevice's "not found"
                    raise InputError("backend", f"{self.name}: {exc}") from None
            self._fetched = time.monotonic()
        return self._device

    @property
    def local(self) -> bool:
        return isinstance(self.device, LocalSimulator)

    def _refresh(self, max_age: float) -> None:
        device = self.device
        if isinstance(device, AwsDevice) and time.monotonic() - self._fetched > max_age:
            with self._aws("GetDevice"):
                device.refresh_metadata()
            self._fetched = time.monotonic()

    def _scrub(self, message: str) -> str:
        """``redact`` plus the secrets of the session in use, which need not come from the environment."""
        message = redact(message)
        device = self._device
        if isinstance(device, AwsDevice):
            creds = device.aws_session.boto_session.get_credentials()
            for secret in (getattr(creds, "secret_key", None), getattr(creds, "token", None)):
                if secret and len(secret) >= 6:
                    message = message.replace(secret, "***")
        return message

    @contextmanager
    def _aws(self, operation: str) -> Iterator[None]:
        """AWS refusals of the request become InputError, everything else from AWS is transient."""
        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = self._scrub(f"{self.name}: {operation}: {exc}")
            if code in USER_ERROR_CODES:
                raise InputError("backend", message) from None
            raise TransientBackendError(message) from None
        except BotoCoreError as exc:  # no credentials, no network, timeouts
            raise TransientBackendError(self._scrub(f"{self.name}: {operation}: {type(exc).__name__}: {exc}")
                                        ) from None

    # -- what the device offers ------------------------------------------------------------------

    def capabilities(self) -> Capabilities:
        props = self.device.properties
        qubits = int(props.paradigm.qubitCount)
        price = (Price(source="free (local simulator)") if self.local
                 else braket_price(self.device_path) or Price(source="unlisted"))
        return Capabilities(
            name=self.name, kind="simulator" if self.simulator else "qpu", qubits=qubits,
            noise="the simulator's (none unless it models noise)" if self.simulator else "the device's",
            max_shots=int(props.service.shotsRange[1]),
            native_gates=tuple(getattr(props.paradigm, "nativeGateSet", None) or ()),
            default_pack=1, max_pack=qubits, options=OPTIONS, price=price,
        )

    def status(self) -> Status:
        self._refresh(0.0)
        device = self.device
        state = str(device.status)
        queue = 0
        try:
            depth = device.queue_depth().quantum_tasks  # type: ignore[attr-defined]
            queue = sum(int(str(v).lstrip(">")) for v in depth.values())
        except (AttributeError, ClientError, BotoCoreError, KeyError, TypeError, ValueError):
            pass  # the queue length is informative only
        return Status(online=state in ("ONLINE", "AVAILABLE"), queue_length=queue,
                      calibration_time=self.calibration_time(), message=state)

    def validate(self, shots: int | None, pack: Pack, options: dict[str, Any] | None
                 ) -> tuple[int | None, int, dict[str, Any]]:
        self._refresh(METADATA_TTL)
        state = str(self.device.status)
        if state in ("OFFLINE", "RETIRED"):
            raise InputError("backend", f"{self.name} is {state}: Amazon Braket accepts no tasks for it")
        shots, width, options = super().validate(shots, pack, options)
        low = int(self.device.properties.service.shotsRange[0])
        if shots is not None and shots < low:
            raise InputError("shots", f"{shots} is below the minimum of {low} on '{self.name}'")
        if not isinstance(options.get("program_set", True), bool):
            raise InputError("options.program_set", f"must be true or false, got {options['program_set']!r}")
        if not self.local and not accounts().braket_s3_bucket:
            raise InputError("QKAN_BRAKET_S3_BUCKET", f"set an S3 bucket for the results of '{self.name}'")
        return shots, width, options

    def calibration(self) -> list[dict]:
        table = braket_calibration(self.device.properties)
        if table is None:
            raise InputError("pack", f"{self.name} publishes no calibration; give pack=<W>")
        return table

    def calibration_time(self) -> str | None:
        return braket_calibration_time(self.device.properties)

    def _check_gates(self, template: Template) -> None:
        action = self.device.properties.action.get(OPENQASM)
        if action is None:
            raise InputError("backend", f"{self.name} does not run OpenQASM gate circuits")
        supported = {op.lower() for op in action.supportedOperations}
        missing = sorted({s.name for s in template.steps} - {"id"} - supported)  # prepare_0 measures only
        if missing:
            raise InputError("backend", f"{self.name} does not support the gates {missing} of the edge circuit")

    def _circuit(self, template: Template, width: int, place: Placement | None) -> Circuit:
        """The program of ``template``: on qubits 0..W−1, or on the placement's; ``prepare_0`` measure-only
        where the device has no ``i``."""
        qubits = list(place.qubits) if place is not None else list(range(width))
        if template == Template.preparation(0) and "i" not in self._operations():
            return measure_only(qubits)
        return braket_template(template, width) if place is None else placed_template(template, place.qubits)

    def _operations(self) -> set[str]:
        action = self.device.properties.action.get(OPENQASM)
        return {op.lower() for op in action.supportedOperations} if action is not None else set()

    def _plan(self, circuits: int, shots: int, program_set: bool) -> tuple[list[int], bool]:
        """Packed circuits per task, and whether they go as program sets (as large as the device allows)."""
        action = self.device.properties.action.get(PROGRAM_SET) if program_set else None
        if action is None or not circuits:
            return [1] * circuits, False
        limit = min(int(action.maximumExecutables), int(action.maximumTotalShots) // shots)
        if limit < 1:
            return [1] * circuits, False
        tasks = math.ceil(circuits / limit)
        base, extra = divmod(circuits, tasks)
        if action.minimumTotalShots and base * shots < action.minimumTotalShots:
            return [1] * circuits, False
        return [base + 1] * extra + [base] * (tasks - extra), True

    def tasks_for(self, executions: int, shots: int, pack: Pack, options: dict[str, Any]) -> int:
        """Tasks as ``submit`` creates them: program sets unless turned off or the round is placed."""
        return len(self._plan(executions, shots, options.get("program_set", True) and pack != "auto")[0])

    def seconds_for(self, executions: int, shots: int, tasks: int) -> float:
        """On-demand simulators bill run time, at least 3 s a task; QPUs bill per task and shot."""
        return self._billed_seconds(tasks)

    def _billed_seconds(self, tasks: int) -> float:
        return tasks * SIMULATOR_MIN_SECONDS if self.simulator and not self.local else 0.0

    # -- tasks -----------------------------------------------------------------------------------

    def submit(self, batch: ActivationBatch | Parts, shots: int | None = None, pack: Pack = None,
               options: dict[str, Any] | None = None) -> Handle:
        shots, width, options = self.validate(shots, pack, options)
        assert shots is not None
        parts = [p for p in parts_of(batch) if p.num_rows]
        for part in parts:
            self._check_gates(part.template)
        width = self.round_width(width, pack, parts[0].num_rows if parts else 0)
        # pack="auto": copies on the chosen qubits; an explicit width: Braket places qubits 0..W−1 itself
        place = self.placement(width, options) if pack == "auto" else None
        executables = [(self._circuit(p.template, width, place), inputs)
                       for p in parts for inputs in braket_inputs(p.template, width, pack_params(p.params, width))]
        sizes, program_set = self._plan(len(executables), shots,
                                        options.get("program_set", True) and place is None)
        tasks: list[Any] = []
        try:
            start = 0
            for size in sizes:
                chunk = executables[start:start + size]
                start += size
                if program_set:
                    spec: Any = ProgramSet(program_bindings(chunk), shots_per_executable=shots)
                    tasks.append(self._run(spec, shots * size))
                else:
                    circuit, inputs = chunk[0]
                    tasks.append(self._run(circuit, shots, inputs or None, placed=place is not None))
        except BaseException:
            self._cancel_tasks(tasks)  # a round is all or nothing: no orphaned, billed tasks
            raise
        data = {"rows": [p.num_rows for p in parts], "width": width, "shots": shots,
                "program_set": program_set, "sizes": sizes}
        if place is not None:
            data["placement"] = place.to_json()
        if all(isinstance(t, LocalQuantumTask) for t in tasks):
            shots_read = [c for t in tasks for c in local_counts(t.result())]
            return Handle(self.name, data=data, result=self._batch_result(shots_read, len(tasks), [], data))
        arns = [t.id for t in tasks]
        return Handle(self.name, provider_job_ids=arns, data={"tasks": arns, **data})

    def _run(self, spec: Any, shots: int, inputs: dict[str, float] | None = None, placed: bool = False) -> Any:
        kwargs: dict[str, Any] = {"shots": shots}
        if inputs is not None:
            kwargs["inputs"] = inputs
        if placed:  # sent as physical qubits ($q) with deviceParameters…disableQubitRewiring
            kwargs["disable_qubit_rewiring"] = True
        if not self.local:
            kwargs["s3_destination_folder"] = (accounts().braket_s3_bucket, accounts().braket_s3_prefix)
        with self._aws("CreateQuantumTask"):
            return self.device.run(spec, **kwargs)

    def poll(self, handle: Handle) -> BatchResult | None:
        if handle.result is not None:
            return handle.result
        device = self.device
        if not isinstance(device, AwsDevice):
            raise ProviderJobLost(f"{self.name}: local tasks {handle.provider_job_ids} are gone")
        session = device.aws_session
        metas = []
        with self._aws("GetQuantumTask"):
            for arn in handle.data["tasks"]:
                meta = AwsQuantumTask(arn, aws_session=session, quiet=True).metadata()
                state = meta.get("status")
                if state in ENDED:
                    reason = meta.get("failureReason") or "no reason given"
                    raise ProviderJobFailed(self._scrub(f"Amazon Braket task {arn} ended {state}: {reason}"))
                if state != "COMPLETED":
                    return None  # tasks run roughly in order: no need to ask about the later ones yet
                metas.append(meta)
        with self._aws("GetObject results.json"):
            shots_read = [c for meta in metas for c in task_counts(session, meta)]
        return self._batch_result(shots_read, len(metas), list(handle.data["tasks"]), handle.data)

    def _batch_result(self, counts: list[Counts], tasks: int, arns: list[str], data: dict[str, Any]
                      ) -> BatchResult:
        """Counts per packed circuit → p0 per row; measured qubit ``qubits[w]`` is copy w."""
        width, shots = int(data["width"]), int(data["shots"])
        place = Placement.from_json(data["placement"]) if "placement" in data else None
        qubits = list(place.qubits) if place else list(range(width))
        copy = {q: w for w, q in enumerate(qubits)}
        ones = np.zeros((len(counts), width), dtype=np.int64)
        for k, (ones_read, measured, shots_read) in enumerate(counts):
            if sorted(measured) != sorted(qubits) or shots_read != shots:
                raise ProviderJobFailed(f"{self.name}: a task returned {shots_read} shots on qubits {measured}, "
                                        f"expected {shots} shots on qubits {sorted(qubits)}")
            ones[k, [copy[q] for q in measured]] = ones_read
        seconds = self._billed_seconds(tasks)
        price = self.capabilities().price
        return counts_result(
            ones, part_rows(data["rows"]), shots, place, provider_job_ids=arns, qpu_seconds=seconds,
            cost=price.cost(tasks, len(counts) * shots, seconds), program_set=bool(data["program_set"]), tasks=tasks,
        )

    def cancel(self, handle: Handle) -> None:
        device = self.device
        if handle.result is not None or not isinstance(device, AwsDevice):
            return
        self._cancel_tasks([AwsQuantumTask(arn, aws_session=device.aws_session, quiet=True)
                            for arn in handle.data.get("tasks", handle.provider_job_ids)])

    def _cancel_tasks(self, tasks: list[Any]) -> None:
        for task in tasks:
            if isinstance(task, AwsQuantumTask):
                try:
                    task.cancel()
                except (ClientError, BotoCoreError):
                    pass  # a task that already ended cannot be cancelled
