"""Backends by the names users type (DESIGN §5).

Each SDK (Qiskit, Braket, PennyLane) takes about a second to import, so a
backend's module is imported only when its name is asked for. Lazy imports
from several threads (the API's request threads) are not safe: two threads
importing qiskit at once can each see one of its modules half-initialised (a
circular import inside qiskit) and fail. So the first use of a backend name in
a process — construction and, offline, its capabilities, which import the rest
of its SDK — happens under one lock; later uses find every module imported.
"""

import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from qkan_orch.backends.accounts import accounts
from qkan_orch.backends.base import Backend, Capabilities, Price
from qkan_orch.backends.names import check_filters, did_you_mean, name_matches
from qkan_orch.models.errors import InputError

log = logging.getLogger("qkan.backends")
_FIRST_USE = threading.RLock()  # reentrant: the error path of get_backend lists local_names, which takes it too
_used: set[str] = set()  # names whose first use (imports included) has completed in this process


def installed_pennylane_devices() -> list[str]:
    return sorted(e.name for e in entry_points(group="pennylane.plugins"))


def get_backend(name: str) -> Backend:
    """The backend called ``name``, or an InputError that lists what exists; the first use of a name is
    serialised (see the module's docstring). A hardware backend's capabilities ask its provider, so they are
    left to the caller: its SDK's client is imported by its constructor."""
    if not isinstance(name, str) or not name:
        raise InputError("backend", "must be a backend name such as 'exact' or 'aer'")
    if name in _used:
        return _backend(name)
    with _FIRST_USE:
        backend = _backend(name)
        if name.startswith("ibm:fake_") or not name.startswith(("ibm:", "braket:arn:")):  # offline: a bounded set
            backend.capabilities()
            _used.add(name)
        return backend


def _backend(name: str) -> Backend:
    if name == "exact":
        from qkan_orch.backends.exact import ExactBackend

        return ExactBackend()
    if name == "aer" or name.startswith("aer:"):
        from qkan_orch.backends.aer import AerBackend

        return AerBackend(name.removeprefix("aer").removeprefix(":") or None)
    if name.startswith("emulate:calibration:"):  # a stored calibration snapshot, through the service's resolver
        from qkan_orch.backends.snapshot_emulator import SnapshotEmulator

        return SnapshotEmulator(name.removeprefix("emulate:calibration:"))
    if name.startswith("emulate:"):
        from qkan_orch.backends.emulator import EmulatorBackend

        return EmulatorBackend(name.removeprefix("emulate:"))
    if name.startswith("ibm:"):
        from qkan_orch.backends.ibm import IBMBackend

        return IBMBackend(name.removeprefix("ibm:"))
    if name in ("braket:local", "braket:local_dm"):
        from qkan_orch.backends.braket_local import BraketLocalBackend

        return BraketLocalBackend(density_matrix=name.endswith("_dm"))
    if name.startswith("braket:arn:"):
        from qkan_orch.backends.braket_aws import BraketDeviceBackend

        return BraketDeviceBackend(name.removeprefix("braket:"))
    if name.startswith("pennylane:"):
        device = name.removeprefix("pennylane:")
        if device not in installed_pennylane_devices():
            raise InputError("backend", f"PennyLane device '{device}' is not installed"
                             f"{did_you_mean(device, installed_pennylane_devices())}")
        from qkan_orch.backends.pennylane_device import PennyLaneBackend

        return PennyLaneBackend(device)
    for plugin in _plugins():
        backend = plugin(name)
        if backend is not None:
            return backend
    raise InputError(
        "backend",
        f"unknown backend '{name}'{did_you_mean(name, local_names())} (local: exact, aer, aer:fake_<device>, "
        "braket:local, braket:local_dm, emulate:dm, emulate:fake_<device>, emulate:calibration:<id>, "
        "pennylane:<device>, ibm:fake_<device>; hardware: ibm:<backend>, braket:<device ARN>; "
        "`qkan-orch backends` lists them all)",
    )


def _plugins() -> list[Callable[[str], Backend | None]]:
    """``get_backend(name) -> Backend | None`` of each module named in QKAN_BACKEND_PLUGINS."""
    names = [n.strip() for n in accounts().backend_plugins.split(",") if n.strip()]
    plugins = []
    for name in names:
        try:
            plugins.append(importlib.import_module(name).get_backend)
        except (ImportError, AttributeError) as exc:
            raise InputError("QKAN_BACKEND_PLUGINS", f"cannot load backend plugin '{name}' ({exc})") from None
    return plugins


def backend_names() -> list[str]:
    """Every backend this installation can run offline, then the hardware its accounts reach."""
    return local_names() + hardware_names()


def local_names() -> list[str]:
    """Every backend this installation can run offline (no account, no network)."""
    with _FIRST_USE:
        from qkan_orch.backends.qiskit_common import fake_backend_classes

        fakes = sorted(fake_backend_classes())
    names = ["exact", "aer", *(f"aer:{fake}" for fake in fakes), "braket:local", "braket:local_dm",
             "emulate:dm", *(f"emulate:{fake}" for fake in fakes)]
    names += [f"pennylane:{device}" for device in installed_pennylane_devices()
              if device.endswith(".qubit") and not device.startswith("braket.aws")]  # cloud: needs an ARN
    return names + [f"ibm:{fake}" for fake in fakes]


def hardware_names() -> list[str]:
    """IBM devices of the configured account and Braket QPUs with a price, when their accounts are set up."""
    from qkan_orch.backends.pricing import BRAKET_PER_SHOT, BRAKET_REGIONS

    names = []
    if accounts().ibm_token is not None:
        from qkan_orch.backends.ibm_account import runtime_service

        try:
            names += [f"ibm:{b.name}" for b in runtime_service().backends(operational=None)]
        except Exception as exc:  # an unreachable account lists nothing; submissions say why
            log.warning("IBM Quantum devices not listed: %s", type(exc).__name__)
    if accounts().braket_s3_bucket:
        names += [f"braket:arn:aws:braket:{BRAKET_REGIONS[path]}::device/qpu/{path}" for path in BRAKET_PER_SHOT]
    return names


@dataclass(frozen=True)
class Unconfigured:
    """Hardware with no account set up: what it is, what it costs, and the setting that would list it."""

    capabilities: Capabilities
    setting: str


def unconfigured_hardware() -> list[Unconfigured]:
    """One row per provider whose account is not set, so a newcomer sees what setting enables it."""
    from qkan_orch.backends.pricing import BRAKET_PER_SHOT, BRAKET_QUBITS, BRAKET_REGIONS, braket_price, ibm_price

    rows = []
    if accounts().ibm_token is None:
        rows.append(Unconfigured(Capabilities(name="ibm:<backend>", kind="qpu", qubits=0, noise="device",
                                              price=ibm_price()), "QKAN_IBM_TOKEN"))
    if not accounts().braket_s3_bucket:
        rows += [Unconfigured(Capabilities(name=f"braket:arn:aws:braket:{BRAKET_REGIONS[path]}::device/qpu/{path}",
                                           kind="qpu", qubits=BRAKET_QUBITS[path], noise="device",
                                           max_pack=BRAKET_QUBITS[path], price=braket_price(path) or Price()),
                              "QKAN_BRAKET_S3_BUCKET (and AWS credentials)") for path in BRAKET_PER_SHOT]
    return rows


def list_backends(kind: str | None = None, provider: str | None = None, text: str | None = None) -> list[Capabilities]:
    """Capabilities of every backend ``backend_names`` lists that answers and passes the filters; names are
    filtered before any capabilities are computed (each SDK takes seconds to import)."""
    check_filters(kind, provider)
    names = local_names() + (hardware_names() if provider in (None, "ibm", "braket") else [])
    found = []
    for name in (n for n in names if name_matches(n, provider, text)):
        try:
            caps = get_backend(name).capabilities()
        except Exception as exc:  # hardware that cannot be reached now is left out of the list
            log.warning("backend %s not listed: %s", name, type(exc).__name__)
            continue
        if kind is None or caps.kind == kind:
            found.append(caps)
    return found
