"""Braket device properties → the per-qubit calibration table ``backends.calibration`` chooses from.

The device's standardized calibration (``properties.standardized``: per-qubit
read-out and RB fidelities, T2) goes through the provider-neutral rule of
``backends.calibration``, so ``pack="auto"`` picks Braket qubits as it picks
IBM's. Devices without one refuse ``pack="auto"``.
"""

from typing import Any

MICROSECONDS = {"s": 1e6, "ms": 1e3, "us": 1.0, "µs": 1.0, "ns": 1e-3}  # per unit of a coherence time
RB = ("RANDOMIZED_BENCHMARKING", "SIMULTANEOUS_RANDOMIZED_BENCHMARKING")  # preferred first


def _label(value: Any) -> str:
    """Schema enums and plain strings alike (v1 units are free text, v2/v3 enums)."""
    return str(getattr(value, "value", value) or "")


def _microseconds(duration: Any) -> float | None:
    """A CoherenceTime/Duration in µs; an unknown unit leaves the qubit uncalibrated rather than guessed."""
    if duration is None:
        return None
    scale = MICROSECONDS.get(_label(duration.unit).lower())
    return None if scale is None else float(duration.value) * scale


def _fidelities(entries: Any) -> dict[str, float]:
    """Fidelity per measurement type (READOUT, RANDOMIZED_BENCHMARKING, …), the first of each."""
    found: dict[str, float] = {}
    for entry in entries or ():
        found.setdefault(_label(getattr(entry.fidelityType, "name", None)).upper(), float(entry.fidelity))
    return found


def braket_calibration(props: Any) -> list[dict] | None:
    """Per qubit of the standardized properties: the table ``backends.calibration`` chooses from.

    None when the device publishes no per-qubit calibration. Schema v3 (IonQ, AQT) gives read-out and
    T2 for the whole device; they then apply to every qubit. Qubits of the connectivity graph missing
    from the table are listed as not operational, so they are counted but never chosen.
    """
    std = getattr(props, "standardized", None)
    per_qubit = getattr(std, "oneQubitProperties", None)
    if not per_qubit:
        return None
    device_readout = getattr(std, "readoutFidelity", None)
    device_gate = _fidelities(getattr(std, "singleQubitFidelity", None))
    table = []
    for key, qubit in per_qubit.items():
        fid = _fidelities(qubit.oneQubitFidelity)
        readout = fid.get("READOUT", float(device_readout[0].fidelity) if device_readout else None)
        rb = next((f[k] for f in (fid, device_gate) for k in RB if k in f), None)
        table.append({"qubit": int(key), "readout_error": None if readout is None else 1.0 - readout,
                      "sx_error": None if rb is None else 1.0 - rb,
                      "t2_us": _microseconds(getattr(qubit, "T2", None) or getattr(std, "T2", None)),
                      "operational": True})
    graph = getattr(getattr(getattr(props, "paradigm", None), "connectivity", None), "connectivityGraph", None) or {}
    listed = {c["qubit"] for c in table}
    missing = {int(q) for k, v in graph.items() for q in (k, *v)} - listed
    table += [{"qubit": q, "readout_error": None, "sx_error": None, "t2_us": None, "operational": False}
              for q in sorted(missing)]
    return sorted(table, key=lambda c: c["qubit"])


def braket_calibration_time(props: Any) -> str | None:
    """When the calibration was taken, ISO 8601 (None without one).

    Schema v1 (IQM) carries no time of its own; the device document it is part of does.
    """
    std = getattr(props, "standardized", None)
    for part in (std, getattr(props, "provider", None), getattr(props, "service", None) if std else None):
        if getattr(part, "updatedAt", None) is not None:
            return part.updatedAt.isoformat()
    return None
