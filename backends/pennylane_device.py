"""``pennylane:<device>``: any installed PennyLane device, via one broadcast QNode call.

Plugin devices work by name with their own options in ``device_options``:
``braket.local.qubit`` offline, ``braket.aws.qubit`` with ``{"device_arn": ...}``
and AWS credentials. A cloud device executes inside the call — PennyLane waits
for its results — so such names run on the provider's own worker queue
(``backends.queues``), where waiting blocks no simulator; for hardware prefer
``ibm:`` / ``braket:``, which never wait.
"""

from typing import Any

import numpy as np
import pennylane as qml

from qkan_orch.backends.accounts import redact
from qkan_orch.backends.base import Capabilities, TransientBackendError
from qkan_orch.backends.queues import queue_for
from qkan_orch.backends.sampling import LocalSamplingBackend
from qkan_orch.circuits.batch import Template
from qkan_orch.circuits.lower_pennylane import pennylane_qnode
from qkan_orch.models.errors import InputError

MAX_SHOTS = 10_000_000


class PennyLaneBackend(LocalSamplingBackend):
    def __init__(self, device: str) -> None:
        self.device = device
        self.name = f"pennylane:{device}"
        self.chunkable = queue_for(self.name) == "local"  # a cloud device bills each call as a task

    def capabilities(self) -> Capabilities:
        return Capabilities(
            name=self.name, kind="simulator", qubits=20, max_shots=MAX_SHOTS,
            noise="as the device defines it (none for default.qubit / lightning.qubit)",
            native_gates=("h", "x", "z", "rz", "ry"), default_pack=1, max_pack=16,
            options=("seed", "device_options"),
        )

    def count_zeros(
        self,
        template: Template,
        packed: np.ndarray,
        width: int,
        shots: int,
        options: dict[str, Any],
        metadata: dict[str, Any],
    ) -> np.ndarray:
        extra = dict(options.get("device_options") or {})
        if "seed" in options:
            extra["seed"] = options["seed"]
        try:
            device = qml.device(self.device, wires=width, **extra)
        except (TypeError, ValueError, qml.exceptions.DeviceError) as exc:
            raise InputError("options.device_options", redact(f"{self.device} refused them: {exc}")) from None
        except Exception as exc:  # a cloud plugin without credentials, region or network
            raise TransientBackendError(redact(f"{self.device}: {type(exc).__name__}: {exc}")) from None
        circuits = packed.shape[0]
        if packed.shape[1] == 0 and circuits > 1:  # nothing to broadcast over: k circuits as k·shots shots
            probs = pennylane_qnode(device, template, width, shots * circuits)(packed.T)
            zeros = np.rint(np.array([p[0] for p in probs]) * shots * circuits).astype(np.int64)
            split = np.arange(circuits)[:, None] < zeros % circuits  # the remainder one by one, from the first
            return zeros // circuits + split
        probs = pennylane_qnode(device, template, width, shots)(packed.T)
        return np.rint(np.stack([np.atleast_2d(p)[:, 0] for p in probs], axis=1) * shots)
