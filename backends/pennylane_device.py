"""``pennylane:<device>``: any installed PennyLane device, via one broadcast QNode call."""

import time
from typing import Any

import numpy as np
import pennylane as qml

from backends.base import Backend, Capabilities, Handle
from circuits.batch import ActivationBatch, BatchResult
from circuits.lower_pennylane import pennylane_qnode
from circuits.packing import binomial_p0, pack_params, unpack_counts
from models.errors import InputError

MAX_SHOTS = 10_000_000


class PennyLaneBackend(Backend):
    def __init__(self, device: str) -> None:
        self.device = device
        self.name = f"pennylane:{device}"

    def capabilities(self) -> Capabilities:
        return Capabilities(
            name=self.name, kind="simulator", qubits=20, max_shots=MAX_SHOTS,
            noise="as the device defines it (none for default.qubit / lightning.qubit)",
            native_gates=("h", "x", "z", "rz", "ry"), default_pack=1, max_pack=16,
            options=("seed", "device_options"),
        )

    def submit(
        self,
        batch: ActivationBatch,
        shots: int | None = None,
        pack: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Handle:
        shots, width, options = self.validate(shots, pack, options)
        start = time.perf_counter()
        packed = pack_params(batch.params, width)
        zeros = np.zeros((0, width))
        if batch.num_rows:
            extra = dict(options.get("device_options") or {})
            if "seed" in options:
                extra["seed"] = options["seed"]
            try:
                device = qml.device(self.device, wires=width, **extra)
            except (TypeError, ValueError, qml.exceptions.DeviceError) as exc:
                raise InputError("options.device_options", f"{self.device} refused them: {exc}") from None
            probs = pennylane_qnode(device, batch.template, width, shots)(packed.T)
            zeros = np.rint(np.stack([np.atleast_2d(p)[:, 0] for p in probs], axis=1) * shots)
        p0, se = binomial_p0(unpack_counts(zeros, batch.num_rows), shots)
        metadata = {"pack": width, "seconds": time.perf_counter() - start}
        return Handle(
            self.name,
            result=BatchResult(p0=p0, p0_stderr=se, shots=shots, executions=zeros.shape[0], metadata=metadata),
        )
