"""Calibrated packing, provider-neutral: which physical qubits ``pack="auto"`` may use.

A calibration is a list of per-qubit dicts — ``qubit``, ``readout_error``,
``sx_error`` (single-qubit gate error), ``t2_us``, ``operational`` — read from
Qiskit targets (``qiskit_common.qubit_calibration``) or Braket device
properties, so one rule picks qubits on every provider.
"""

from dataclasses import dataclass

from qkan_orch.backends.accounts import accounts
from qkan_orch.models.errors import InputError


@dataclass(frozen=True)
class Thresholds:
    """Which qubits ``pack="auto"`` may use; defaults from QKAN_PACK_* settings, per job from options."""

    max_readout_error: float
    max_sx_error: float
    min_t2_us: float
    max_width: int

    @classmethod
    def from_options(cls, options: dict) -> "Thresholds":
        acc = accounts()
        values = {
            "max_readout_error": options.get("max_readout_error", acc.pack_max_readout_error),
            "max_sx_error": options.get("max_sx_error", acc.pack_max_sx_error),
            "min_t2_us": options.get("min_t2_us", acc.pack_min_t2_us),
        }
        for key, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise InputError(f"options.{key}", f"must be a non-negative number, got {value!r}")
        return cls(**{k: float(v) for k, v in values.items()}, max_width=acc.pack_max_width)


def usable_qubits(calibration: list[dict], limits: Thresholds) -> list[dict]:
    """Operational, fully calibrated qubits within the thresholds, best read-out first."""
    good = [
        c for c in calibration
        if c["operational"] and None not in (c["readout_error"], c["sx_error"], c["t2_us"])
        and c["readout_error"] <= limits.max_readout_error and c["sx_error"] <= limits.max_sx_error
        and c["t2_us"] >= limits.min_t2_us
    ]
    return sorted(good, key=lambda c: (c["readout_error"], c["sx_error"], c["qubit"]))


def choose_qubits(calibration: list[dict], width: int, limits: Thresholds) -> list[dict]:
    """The ``width`` best usable qubits; an InputError that says how many pass if too few do."""
    good = usable_qubits(calibration, limits)
    if width > len(good):
        raise InputError(
            "pack", f"{width} copies need {width} qubits; {len(good)} of {len(calibration)} pass the calibration "
            f"thresholds (read-out ≤ {limits.max_readout_error}, √X ≤ {limits.max_sx_error}, "
            f"T2 ≥ {limits.min_t2_us} µs)")
    return good[:width]
