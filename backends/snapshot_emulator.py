"""``emulate:calibration:<id>``: the emulator with a stored calibration snapshot's noise, basis and qubits.

The lowering follows the device: a basis holding every gate of the edge circuit (Braket devices, which run the
template's OpenQASM gates) runs those gates; otherwise (IBM: rz, sx, x) the template is transpiled by Qiskit
against a Target built from the document, as ``emulate:<fake>`` transpiles against the fake's compact target.
"""

from functools import lru_cache
from typing import Any

import numpy as np

from qkan_orch.backends.base import Capabilities
from qkan_orch.backends.calibration_snapshot import resolve
from qkan_orch.backends.emulator import MAX_SHOTS, EmulatorBackend, Op, emulate_p0, isa_programs, template_program
from qkan_orch.backends.emulator_noise import DeviceNoise, noiseless
from qkan_orch.circuits.batch import Template


@lru_cache(maxsize=64)
def _programs(snapshot_id: str, qubits: tuple[int, ...], template: Template
              ) -> tuple[list[tuple[Op, ...]], list[int], DeviceNoise]:
    """Per copy, its gates and compact qubit, and the noise of ``qubits``; once per (snapshot, qubits, template).

    The template's own gates when the basis holds them all (Braket), else Qiskit's lowering to the basis on a
    compact Target of the document, which ``isa_template`` caches under the snapshot's id."""
    from qkan_orch.backends.qiskit_common import isa_template

    document, width = resolve(snapshot_id), len(qubits)
    if {s.name for s in template.steps} <= set(document.basis_gates):
        return [template_program(template)] * width, list(range(width)), document.noise(qubits)
    # copy w pinned on compact qubit w, as the device run's initial layout pins it on qubits[w]
    circuit = isa_template(template, width, document.target(qubits), key=("calibration", snapshot_id, qubits),
                           layout=tuple(range(width)))
    programs, sites = isa_programs(circuit, width, template.num_params)
    return programs, sites, document.noise(qubits)


class SnapshotEmulator(EmulatorBackend):
    """``emulate:calibration:<id>``: the emulator with a stored calibration's noise, basis and qubits."""

    def __init__(self, snapshot_id: str) -> None:
        self.snapshot_id = snapshot_id
        self.document = resolve(snapshot_id)
        self.device = f"calibration:{snapshot_id}"
        self.name = f"emulate:{self.device}"

    def capabilities(self) -> Capabilities:
        doc, usable = self.document, len(self.document.operational())
        return Capabilities(
            name=self.name, kind="noisy simulator", qubits=len(doc.qubits), max_shots=MAX_SHOTS,
            noise=f"emulated {doc.backend} calibration of {doc.calibrated_at.isoformat()}: depolarizing + T1/T2 "
                  "relaxation per gate, read-out error; exact probabilities without shots",
            native_gates=doc.basis_gates, default_pack=min(4, usable), max_pack=usable,
            options=("seed", "noise", "qubits"), exact_probabilities=True,
        )

    def _check_qubits(self, chosen: Any, width: int) -> None:
        self.document.check_qubits(chosen, width)

    def noisy_p0(self, template: Template, params: np.ndarray, width: int, options: dict[str, Any],
                 metadata: dict[str, Any]) -> np.ndarray:
        chosen = options.get("qubits")
        qubits = tuple(chosen) if chosen else self.document.best_qubits(width)
        programs, sites, noise = _programs(self.snapshot_id, qubits, template)
        metadata.update(physical_qubits=[qubits[s] for s in sites], calibration_id=self.snapshot_id)
        return emulate_p0(programs, sites, params, noise if options.get("noise", True) else noiseless(width, qubits))
