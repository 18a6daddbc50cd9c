"""Calibrated packing, provider-neutral: which physical qubits ``pack="auto"`` may use, and what they read.

A calibration is a list of per-qubit dicts — ``qubit``, ``readout_error``,
``sx_error`` (single-qubit gate error), ``t2_us``, ``operational`` — read from
Qiskit targets (``qiskit_common.qubit_calibration``) or Braket device
properties, so one rule picks qubits on every provider. ``CalibratedBackend``
is that rule as a backend (IBM, Braket devices): the width ``pack="auto"``
means, the ``Placement`` of a round, and its counts turned into a BatchResult.
"""

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from qkan_orch.backends.accounts import accounts
from qkan_orch.backends.base import Backend, Pack
from qkan_orch.circuits.batch import BatchResult
from qkan_orch.circuits.packing import binomial_p0, unpack_parts
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


ANY_QUBIT = Thresholds(max_readout_error=1.0, max_sx_error=1.0, min_t2_us=0.0, max_width=10**6)


@dataclass(frozen=True)
class Placement:
    """The physical qubits a round's copies run on (copy w on ``qubits[w]``) and the calibration that chose them."""

    qubits: tuple[int, ...]
    calibration: tuple[dict, ...]
    calibration_time: str | None

    def to_json(self) -> dict[str, Any]:
        """What handles, results and the job's ``placement`` column carry."""
        return {"qubits": list(self.qubits), "calibration": list(self.calibration),
                "calibration_time": self.calibration_time}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> "Placement":
        return cls(tuple(int(q) for q in obj["qubits"]), tuple(obj["calibration"]), obj["calibration_time"])


class CalibratedBackend(Backend):
    """A device that publishes per-qubit calibration, so ``pack="auto"`` can choose its qubits."""

    @abstractmethod
    def calibration(self) -> list[dict]:
        """The per-qubit table (see the module docstring); an InputError if the device has none."""

    @abstractmethod
    def calibration_time(self) -> str | None:
        """When the device was calibrated, ISO 8601 (None if it does not say)."""

    def auto_pack(self, options: dict[str, Any]) -> int:
        """As many copies as qubits pass the thresholds, up to ``QKAN_PACK_MAX_WIDTH``."""
        limits = Thresholds.from_options(options)
        good = usable_qubits(self.calibration(), limits)
        if not good:
            raise InputError("pack", f"no qubit of {self.name} passes the calibration thresholds {limits}")
        return min(len(good), limits.max_width)

    def validate(self, shots: int | None, pack: Pack, options: dict[str, Any] | None
                 ) -> tuple[int | None, int, dict[str, Any]]:
        """The common checks, plus the per-job thresholds whatever ``pack`` is (options are refused by field)."""
        shots, width, options = super().validate(shots, pack, options)
        Thresholds.from_options(options)
        return shots, width, options

    def round_width(self, width: int, pack: Pack, rows: int) -> int:
        """With ``pack="auto"`` never more copies than rows (an idle copy buys nothing); an explicit width
        as given."""
        return max(1, min(width, rows)) if pack == "auto" else width

    def placement(self, width: int, options: dict[str, Any], calibrated: bool = True) -> Placement:
        """The ``width`` best qubits: within the thresholds if ``calibrated``, any operational ones otherwise."""
        limits = Thresholds.from_options(options) if calibrated else ANY_QUBIT
        chosen = choose_qubits(self.calibration(), width, limits)
        return Placement(tuple(c["qubit"] for c in chosen), tuple(chosen), self.calibration_time())


def part_rows(stored: int | list[int]) -> list[int]:
    """Rows per part of a stored handle; a handle written before submissions had parts holds one count."""
    return [int(r) for r in stored] if isinstance(stored, list) else [int(stored)]


def counts_result(ones: np.ndarray, part_rows: list[int], shots: int, placement: Placement | None, *,
                  provider_job_ids: list[str], qpu_seconds: float, cost: float, **metadata: Any) -> BatchResult:
    """Ones per (packed circuit, copy) of parts of ``part_rows[k]`` rows packed one after the other → p0 of
    every row, its standard error and bookkeeping."""
    p0, se = binomial_p0(unpack_parts(shots - ones, part_rows), shots)
    if placement is not None:
        metadata["placement"] = placement.to_json()
    return BatchResult(
        p0=p0, p0_stderr=se, shots=shots, executions=int(ones.shape[0]), provider_job_ids=provider_job_ids,
        qpu_seconds=qpu_seconds, cost=cost, metadata={"pack": int(ones.shape[1]), **metadata},
    )
