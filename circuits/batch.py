"""The compiler's IR: what a backend executes and what it returns.

An ``ActivationBatch`` is, in spirit, a Qiskit PUB: one parameterised template
plus a float64 matrix with one row per circuit to run. ``segments`` say which
(sample, out, in) activation each row serves, so results scatter back; a batch
may carry several layers' rows under one template (QKAN-LSTM gates of one time
step), each as its own segment.
"""

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from qkan_orch.circuits.folding import PREPARATIONS, Step, folded_steps
from qkan_orch.models.ansatz import Ansatz, build_ansatz

Readout = Literal["z", "fast"]


@dataclass(frozen=True)
class Template:
    """The parameterised single-qubit edge circuit; hashable, so lowerings cache on it.

    ``fold`` is the zero-noise scale factor the circuit runs at (1: as trained; ``fenced``: a barrier
    after every gate even then, as in a ZNE round), and ``ansatz`` may also name a read-out calibration
    circuit (``prepare_0``/``prepare_1``, no parameters); see ``circuits.folding``.
    """

    ansatz: str
    reps: int
    fold: int = 1
    fenced: bool = False

    @property
    def circuit(self) -> Ansatz:
        return build_ansatz(self.ansatz, self.reps)

    @property
    def num_params(self) -> int:
        return 0 if self.ansatz in PREPARATIONS else self.circuit.num_params

    @property
    def steps(self) -> tuple[Step, ...]:
        """The gates every lowering emits for one copy (folded, fenced); see ``circuits.folding``."""
        return folded_steps(self.ansatz, self.reps, self.fold, self.fenced)

    @classmethod
    def preparation(cls, bit: int) -> "Template":
        """The read-out calibration circuit that prepares |bit⟩ and measures it."""
        return cls(f"prepare_{bit}", 0)


@dataclass(frozen=True)
class Segment:
    """``slots[b, o, i]`` is the row whose read-out is act[b, o, i]; −1 means not run (zero weight)."""

    name: str
    slots: np.ndarray


@dataclass(frozen=True)
class ActivationBatch:
    template: Template
    params: np.ndarray  # (N, P) float64, column order of models.ansatz
    segments: tuple[Segment, ...]
    readout: Readout

    @property
    def num_rows(self) -> int:
        return int(self.params.shape[0])

    @property
    def num_requested(self) -> int:
        """Activations served, i.e. rows before deduplication and zero-weight pruning."""
        return int(sum(s.slots.size for s in self.segments))

    def scatter(self, values: np.ndarray) -> list[np.ndarray]:
        """Per segment, an array shaped like its slots holding the row values (0 where not run)."""
        padded = np.append(np.asarray(values, dtype=np.float64), 0.0)  # slot −1 reads the 0
        return [padded[s.slots] for s in self.segments]

    @staticmethod
    def concatenate(batches: "list[ActivationBatch]") -> "ActivationBatch":
        """One batch from several with the same template and read-out (one provider job)."""
        first = batches[0]
        if any(b.template != first.template or b.readout != first.readout for b in batches):
            raise ValueError("only batches with the same template and read-out can be joined")
        segments, offset = [], 0
        for b in batches:
            for s in b.segments:
                segments.append(Segment(s.name, np.where(s.slots >= 0, s.slots + offset, -1)))
            offset += b.num_rows
        params = np.concatenate([b.params for b in batches], axis=0)
        return ActivationBatch(first.template, params, tuple(segments), first.readout)

    def slice_rows(self, start: int, stop: int) -> "ActivationBatch":
        """Rows ``start:stop`` as a batch of their own, to run one chunk of a long local round.

        It serves no activation by itself (no segments): its result is joined to the other chunks'
        (``BatchResult.concatenate``) and the whole batch scatters that.
        """
        return ActivationBatch(self.template, self.params[start:stop], (), self.readout)


Parts = tuple[ActivationBatch, ...]
"""Batches that run as one provider job (PUBs of one Sampler job, bindings of one program set), all with
the same packing width and qubits; the result holds their rows one part after the other. Mitigation
submits a round this way: the rows at every fold scale and the read-out calibration circuits."""


def parts_of(batch: ActivationBatch | Parts) -> Parts:
    """A submission as its parts: a single batch is one part."""
    return (batch,) if isinstance(batch, ActivationBatch) else tuple(batch)


@dataclass
class BatchResult:
    """What a backend measured for each row of a batch.

    ``p0`` is the probability of reading 0 (exact, or estimated from
    ``shots``), ``p0_stderr`` its standard error (0 when analytic). Provider
    bookkeeping rides along so jobs can report it. A mitigated result keeps
    what was measured before mitigation in ``raw_p0``/``raw_p0_stderr``
    (the scale-1 rows as read, no read-out correction).
    """

    p0: np.ndarray
    p0_stderr: np.ndarray
    shots: int = 0
    executions: int = 0
    provider_job_ids: list[str] = field(default_factory=list)
    qpu_seconds: float = 0.0
    cost: float = 0.0
    metadata: dict = field(default_factory=dict)
    raw_p0: np.ndarray | None = None
    raw_p0_stderr: np.ndarray | None = None

    @property
    def qubits(self) -> list[int] | None:
        """The physical qubit of each packed copy where the backend placed them (a calibrated placement, or a
        device-shaped simulator's slice); row r ran on copy r % W (``circuits.packing``)."""
        qubits = (self.metadata.get("placement") or {}).get("qubits") or self.metadata.get("physical_qubits")
        return [int(q) for q in qubits] if qubits else None

    @staticmethod
    def concatenate(results: "list[BatchResult]") -> "BatchResult":
        """The result of consecutive row chunks of one batch, as one submission of all of them reports it.

        Chunks of a round share their backend's choices (width, qubits, noise), so the metadata is the
        first chunk's, with ``seconds`` summed where the backend reports it.
        """
        first = results[0]
        if any(r.shots != first.shots for r in results):
            raise ValueError("only results measured with the same shots per circuit can be joined")
        metadata = dict(first.metadata)
        if "seconds" in metadata:
            metadata["seconds"] = sum(r.metadata["seconds"] for r in results)
        raw = all(r.raw_p0 is not None for r in results)
        return BatchResult(
            p0=np.concatenate([r.p0 for r in results]),
            p0_stderr=np.concatenate([r.p0_stderr for r in results]),
            shots=first.shots,
            executions=sum(r.executions for r in results),
            provider_job_ids=[i for r in results for i in r.provider_job_ids],
            qpu_seconds=sum(r.qpu_seconds for r in results),
            cost=sum(r.cost for r in results),
            metadata=metadata,
            raw_p0=np.concatenate([r.raw_p0 for r in results]) if raw else None,  # type: ignore[misc]
            raw_p0_stderr=np.concatenate([r.raw_p0_stderr for r in results]) if raw else None,  # type: ignore[misc]
        )
