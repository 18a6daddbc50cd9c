"""Mitiq's zero-noise extrapolation of one edge circuit, run inside the mitiq venv by ``bench/mitigation.py``.

Reads one JSON object on stdin — ``gates`` ([name, angle or null] at scale 1), ``depolarizing``, ``flip``,
``shots`` (0: the exact probability, no sampling), ``scale_factors``, ``extrapolations``, ``seed`` — and
writes one JSON object on stdout: per extrapolation, mitiq's estimate, the scale factors and values its
factory saw and the gates of each folded circuit. The circuit is a cirq circuit, folded by
``mitiq.zne.scaling.fold_all`` (every gate G → G(G†G)^k, our fold); the executor turns each operation back
into its unitary (``cirq.unitary``) and runs ``edge_executor``, the same code our side runs.
"""

import json
import sys

import cirq
import mitiq
import numpy as np
from edge_executor import probability, zeros
from mitiq import zne
from mitiq.zne.scaling import fold_all

GATES = {"h": cirq.H, "x": cirq.X, "z": cirq.Z}
ROTATIONS = {"rz": cirq.rz, "ry": cirq.ry}


def factory(name: str, scales: list[float]) -> zne.inference.Factory:
    if name == "linear":
        return zne.LinearFactory(scales)
    if name == "richardson":
        return zne.RichardsonFactory(scales)
    return zne.ExpFactory(scales, asymptote=0.5)  # fully depolarised: p0 → ½, as ours


def main() -> None:
    job = json.load(sys.stdin)
    qubit = cirq.LineQubit(0)
    circuit = cirq.Circuit(GATES[name](qubit) if angle is None else ROTATIONS[name](angle)(qubit)
                           for name, angle in job["gates"])
    rng = np.random.default_rng(job["seed"])
    shots = job["shots"]
    counts: list[int] = []

    def executor(folded: cirq.Circuit) -> float:
        unitaries = [cirq.unitary(op) for op in folded.all_operations()]
        counts.append(len(unitaries))
        if not shots:
            return probability(unitaries, job["depolarizing"], job["flip"])
        return zeros(unitaries, job["depolarizing"], job["flip"], shots, rng) / shots

    out = {"versions": {"mitiq": mitiq.__version__, "cirq": cirq.__version__, "numpy": np.__version__}}
    for name in job["extrapolations"]:
        counts.clear()
        fit = factory(name, [float(s) for s in job["scale_factors"]])
        estimate = zne.execute_with_zne(circuit, executor, factory=fit, scale_noise=fold_all)
        out[name] = {"estimate": float(estimate), "scales": [float(s) for s in fit.get_scale_factors()],
                     "values": [float(v) for v in fit.get_expectation_values()], "gates": list(counts)}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
