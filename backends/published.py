"""Hardware quoted without an account: the price table and each device's published limits.

A newcomer asks what a run would cost before setting up IBM Quantum or AWS.
Without an account the device cannot be asked, so these stand-ins answer from
what is published: IBM devices from the snapshot Qiskit Runtime ships as
``fake_<name>`` (qubits, shot limit, a dated calibration for ``pack="auto"``);
Braket devices from their providers' qubit counts. What only the provider
would decide is taken at its upper bound and named in ``assumptions``: Braket
program-set limits are read from the device, so a quote counts one task per
circuit. They quote; ``submit`` refuses (``validate`` passes, ``submit`` is the
real backend's and needs the account).
"""

from typing import Any

from qkan_orch.backends.accounts import accounts
from qkan_orch.backends.base import Backend, Capabilities, Pack, Price, Status
from qkan_orch.backends.braket_aws import OPTIONS as BRAKET_OPTIONS
from qkan_orch.backends.braket_aws import BraketDeviceBackend
from qkan_orch.backends.ibm import IBMBackend
from qkan_orch.backends.names import did_you_mean
from qkan_orch.backends.pricing import BRAKET_QUBITS, BRAKET_REGIONS, braket_price
from qkan_orch.backends.qiskit_common import fake_backend, fake_backend_classes
from qkan_orch.backends.registry import get_backend
from qkan_orch.models.errors import InputError


class PublishedIBMDevice(IBMBackend):
    """``ibm:<device>`` from its ``fake_<device>`` snapshot: real qubits, shot limit and price, dated calibration."""

    def __init__(self, device: str, snapshot: str) -> None:
        super().__init__(device)
        self.snapshot = snapshot
        self.assumptions = (f"no IBM Quantum account (QKAN_IBM_TOKEN): qubits, shot limit and calibration from "
                            f"the published {snapshot} snapshot; the device's status is not checked",)

    def _backend(self, width: int = 1) -> Any:
        return fake_backend(self.snapshot)

    def status(self) -> Status:
        return Status(online=True, calibration_time=self.calibration_time(), message="not checked: no account")

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise InputError("QKAN_IBM_TOKEN", f"set an IBM Quantum account to run on '{self.name}'")


class PublishedBraketDevice(BraketDeviceBackend):
    """A Braket device in the price table, with its published qubit count; no calibration, no program-set limits."""

    def __init__(self, arn: str, qubits: int) -> None:
        super().__init__(arn)
        self.qubits = qubits
        self.assumptions = ("no Amazon Braket account (QKAN_BRAKET_S3_BUCKET): qubits from the provider's data "
                            "sheet; program-set limits are read from the device, so every circuit counts as a "
                            "task (+ USD 0.30 each on QPUs; program sets, where offered, need far fewer)",)

    @property
    def local(self) -> bool:
        return False

    def capabilities(self) -> Capabilities:
        return Capabilities(
            name=self.name, kind="simulator" if self.simulator else "qpu", qubits=self.qubits,
            noise="the simulator's (none unless it models noise)" if self.simulator else "the device's",
            default_pack=1, max_pack=self.qubits, options=BRAKET_OPTIONS,
            price=braket_price(self.device_path) or Price(source="unlisted"))

    def status(self) -> Status:
        return Status(online=True, message="not checked: no account")

    def validate(self, shots: int | None, pack: Pack, options: dict[str, Any] | None
                 ) -> tuple[int | None, int, dict[str, Any]]:
        return Backend.validate(self, shots, pack, options)

    def calibration(self) -> list[dict]:
        raise InputError("pack", f"pack=\"auto\" reads {self.name}'s calibration, which needs an Amazon Braket "
                         "account; give pack=<W> to quote")

    def tasks_for(self, executions: int, shots: int, pack: Pack, options: dict[str, Any]) -> int:
        return executions

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise InputError("QKAN_BRAKET_S3_BUCKET", f"set up an Amazon Braket account to run on '{self.name}'")


def quoting_backend(name: str) -> tuple[Backend, tuple[str, ...]]:
    """The backend that quotes ``name`` and what its quote assumes: the real one when its account is set up,
    else a published stand-in (hardware the price table or Qiskit's snapshots know)."""
    if name.startswith("ibm:") and not name.startswith("ibm:fake_") and accounts().ibm_token is None:
        device = name.removeprefix("ibm:")
        snapshots = {f"ibm_{fake.removeprefix('fake_')}": fake for fake in fake_backend_classes()}
        if device not in snapshots:
            raise InputError("backend", f"no published limits of '{device}' to quote without an IBM Quantum "
                             f"account{did_you_mean(device, snapshots)}; set QKAN_IBM_TOKEN to quote any device")
        backend: PublishedIBMDevice | PublishedBraketDevice = PublishedIBMDevice(device, snapshots[device])
        return backend, backend.assumptions
    if name.startswith("braket:arn:") and not accounts().braket_s3_bucket:
        backend = BraketDeviceBackend(name.removeprefix("braket:"))  # checks the ARN's form
        if backend.device_path not in BRAKET_QUBITS:
            known = [f"braket:arn:aws:braket:{BRAKET_REGIONS.get(p, '')}::device/"
                     f"{'quantum-simulator' if p.startswith('amazon/') else 'qpu'}/{p}" for p in BRAKET_QUBITS]
            raise InputError("backend", f"no published limits of '{backend.device_path}' to quote without an "
                             f"Amazon Braket account{did_you_mean(name, known)}; set QKAN_BRAKET_S3_BUCKET (and "
                             "AWS credentials) to quote any device")
        backend = PublishedBraketDevice(backend.arn, BRAKET_QUBITS[backend.device_path])
        return backend, backend.assumptions
    return get_backend(name), ()
