"""One noisy qubit, simulated exactly and sampled with shots: the executor both ZNE implementations run.

Pure numpy and nothing of ours, so the mitiq environment (its own numpy) imports it as it is. A circuit is a
list of 2×2 unitaries; after every one the state goes through the depolarizing channel of Braket's
``Depolarizing(p)`` (what ``braket:local_dm`` applies after every gate)

    ρ ← (1 − p)·ρ + p/3·(XρX + YρY + ZρZ),

and before the measurement through a symmetric read-out flip f: P(read 0) = (1 − f)·p0 + f·(1 − p0).
A run of ``shots`` shots draws Binomial(shots, P(read 0)) zeros.
"""

import numpy as np

PAULIS = (np.array([[0, 1], [1, 0]], dtype=complex), np.array([[0, -1j], [1j, 0]]), np.diag([1.0 + 0j, -1.0]))


def gate(name: str, angle: float = 0.0) -> np.ndarray:
    """The unitary of one of the edge circuit's gates (RZ(a) = e^{−iaZ/2}, RY(a) = e^{−iaY/2})."""
    c, s = np.cos(angle / 2), np.sin(angle / 2)
    return {
        "h": np.array([[1, 1], [1, -1]], dtype=complex) / np.sqrt(2),
        "x": PAULIS[0],
        "z": PAULIS[2],
        "rz": np.diag([np.exp(-0.5j * angle), np.exp(0.5j * angle)]),
        "ry": np.array([[c, -s], [s, c]], dtype=complex),
    }[name]


def probability(unitaries: list[np.ndarray], depolarizing: float, flip: float) -> float:
    """P(read 0) after ``unitaries`` from |0⟩, with the noise above."""
    rho = np.array([[1, 0], [0, 0]], dtype=complex)
    for u in unitaries:
        rho = u @ rho @ u.conj().T
        rho = (1 - depolarizing) * rho + depolarizing / 3 * sum(p @ rho @ p for p in PAULIS)
    p0 = float(rho[0, 0].real)
    return (1 - flip) * p0 + flip * (1 - p0)


def zeros(unitaries: list[np.ndarray], depolarizing: float, flip: float, shots: int,
          rng: np.random.Generator) -> int:
    """The number of 0 outcomes in ``shots`` shots."""
    return int(rng.binomial(shots, probability(unitaries, depolarizing, flip)))
