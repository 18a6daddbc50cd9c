"""Backends by the names users type (DESIGN §5)."""

from backends.aer import AerBackend
from backends.base import Backend, Capabilities
from backends.braket_local import BraketLocalBackend
from backends.exact import ExactBackend
from backends.pennylane_device import PennyLaneBackend, installed_devices
from backends.qiskit_common import fake_backend_classes
from models.errors import InputError

LOCAL_BACKENDS = ("exact", "aer", "aer:fake_sherbrooke", "braket:local", "braket:local_dm", "pennylane:default.qubit")


def get_backend(name: str) -> Backend:
    """The backend called ``name``, or an InputError that lists what exists."""
    if not isinstance(name, str) or not name:
        raise InputError("backend", "must be a backend name such as 'exact' or 'aer'")
    if name == "exact":
        return ExactBackend()
    if name == "aer":
        return AerBackend()
    if name.startswith("aer:"):
        return AerBackend(name.removeprefix("aer:"))
    if name in ("braket:local", "braket:local_dm"):
        return BraketLocalBackend(density_matrix=name.endswith("_dm"))
    if name.startswith("pennylane:"):
        return PennyLaneBackend(name.removeprefix("pennylane:"))
    raise InputError(
        "backend",
        f"unknown backend '{name}' (local: exact, aer, aer:fake_<device>, braket:local, "
        "braket:local_dm, pennylane:<device>; `qkan-orch backends` lists them all)",
    )


def list_backends() -> list[Capabilities]:
    """Every backend this installation can run, one entry per concrete name."""
    names = ["exact", "aer"]
    names += [f"aer:{fake}" for fake in sorted(fake_backend_classes())]
    names += ["braket:local", "braket:local_dm"]
    names += [f"pennylane:{device}" for device in installed_devices() if device.endswith(".qubit")]
    return [get_backend(n).capabilities() for n in names]
