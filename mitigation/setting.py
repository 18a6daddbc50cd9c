"""What a job asks for: ``none`` | ``readout`` | ``zne`` | ``readout+zne``, or an object with settings.

Read-out mitigation adds two calibration circuits per ``shots`` (|0⟩ and |1⟩
on every copy's qubit), ⌈calibration_shots / shots⌉ times each: about
2·calibration_shots shots a round. ZNE runs every row once per scale factor,
so a round costs Σλ / 1 more gate time and len(λ) times the shots (for
[1, 3, 5]: 3× the shots, 9× the gates).
"""

from dataclasses import dataclass
from typing import Any

from qkan_orch.backends.base import Capabilities
from qkan_orch.circuits.folding import MAX_FOLD
from qkan_orch.models.errors import InputError

METHODS = ("none", "readout", "zne", "readout+zne")
EXTRAPOLATIONS = ("linear", "richardson", "exponential")
DEFAULT_SCALES = (1, 3, 5)
DEFAULT_CALIBRATION_SHOTS = 10_000  # per preparation and qubit, rounded up to whole circuits
MAX_CALIBRATION_SHOTS = 10_000_000
MAX_SCALES = 7
SETTINGS = ("method", "calibration_shots", "scale_factors", "extrapolation")


@dataclass(frozen=True)
class Mitigation:
    readout: bool = False
    scale_factors: tuple[int, ...] = (1,)  # (1,): no zero-noise extrapolation
    extrapolation: str = "linear"
    calibration_shots: int = DEFAULT_CALIBRATION_SHOTS

    @property
    def zne(self) -> bool:
        return len(self.scale_factors) > 1

    @property
    def method(self) -> str:
        return {(False, False): "none", (True, False): "readout", (False, True): "zne",
                (True, True): "readout+zne"}[(self.readout, self.zne)]

    @property
    def active(self) -> bool:
        return self.readout or self.zne

    def to_json(self) -> dict[str, Any]:
        """The value stored on a job and shown wherever the job is."""
        out: dict[str, Any] = {"method": self.method}
        if self.readout:
            out["calibration_shots"] = self.calibration_shots
        if self.zne:
            out.update(scale_factors=list(self.scale_factors), extrapolation=self.extrapolation)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any] | None) -> "Mitigation":
        """What ``to_json`` stored (None, as on jobs from before mitigation existed: none), read by the rules
        ``parse`` checks with, defaults included."""
        return cls._from_settings(obj) if obj else cls()

    @classmethod
    def parse(cls, value: Any, caps: Capabilities, field: str = "mitigation") -> "Mitigation":
        """The setting ``value`` names on a backend with ``caps``; None means the backend's default."""
        if value is None:
            return default_for(caps)
        method_field = field if isinstance(value, str) else f"{field}.method"
        if isinstance(value, str):
            value = {"method": value}
        if not isinstance(value, dict):
            raise InputError(field, f"must be one of {', '.join(METHODS)} or an object, got {value!r}")
        chosen = cls._from_settings(value, field, method_field)
        if chosen.active and not caps.shot_based:
            raise InputError(field, f"'{caps.name}' is analytic: there is no noise to mitigate (use none)")
        return chosen

    @classmethod
    def _from_settings(cls, value: dict[str, Any], field: str = "mitigation",
                       method_field: str = "mitigation.method") -> "Mitigation":
        """The one reading of a settings object, with its defaults; an InputError names the bad setting."""
        unknown = sorted(set(value) - set(SETTINGS))
        if unknown:
            raise InputError(f"{field}.{unknown[0]}", f"is not a mitigation setting (settings: {', '.join(SETTINGS)})")
        method = value.get("method", "readout+zne" if "scale_factors" in value else "readout")
        if method not in METHODS:
            raise InputError(method_field, f"must be one of {', '.join(METHODS)}, got {method!r}")
        readout, zne = method in ("readout", "readout+zne"), method in ("zne", "readout+zne")
        shots = _calibration_shots(value.get("calibration_shots", DEFAULT_CALIBRATION_SHOTS),
                                   f"{field}.calibration_shots")
        scales = _scale_factors(value.get("scale_factors", DEFAULT_SCALES), f"{field}.scale_factors")
        extrapolation = value.get("extrapolation", "linear")
        if extrapolation not in EXTRAPOLATIONS:
            raise InputError(f"{field}.extrapolation", f"must be one of {', '.join(EXTRAPOLATIONS)}, "
                             f"got {extrapolation!r}")
        return cls(readout, scales if zne else (1,), extrapolation, shots)


def default_for(caps: Capabilities) -> "Mitigation":
    """Read-out correction where there is read-out error (noisy simulators, QPUs); nothing on ideal ones."""
    return Mitigation(readout=caps.kind in ("noisy simulator", "qpu"))


def _calibration_shots(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CALIBRATION_SHOTS:
        raise InputError(field, f"must be an integer in 1..{MAX_CALIBRATION_SHOTS}, got {value!r}")
    return value


def _scale_factors(value: Any, field: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not value:
        raise InputError(field, f"must be a list of odd integers such as [1, 3, 5], got {value!r}")
    if len(value) > MAX_SCALES:
        raise InputError(field, f"at most {MAX_SCALES} scale factors, got {len(value)}")
    for factor in value:
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1 or factor % 2 == 0:
            raise InputError(field, f"must be positive odd integers (G → G(G†G)^k), got {factor!r}")
        if factor > MAX_FOLD:
            raise InputError(field, f"must be at most {MAX_FOLD}, got {factor}")
    scales = tuple(sorted(set(value)))
    if len(scales) != len(value):
        raise InputError(field, f"must be distinct, got {list(value)}")
    if len(scales) < 2 or scales[0] != 1:
        raise InputError(field, f"need 1 (the circuit as trained) and at least one more, got {list(value)}")
    return scales
