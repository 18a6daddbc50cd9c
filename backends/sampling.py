"""Shot-based simulators that finish inside ``submit``.

They differ only in how they run packed circuits and count outcomes; the
validation, packing, binomial estimate and bookkeeping are shared here. A
submission of several parts (``circuits.batch.Parts``) runs part after part
at one width, on the same qubits.
"""

import time
from abc import abstractmethod
from typing import Any

import numpy as np

from qkan_orch.backends.base import Backend, Handle, SeedStream
from qkan_orch.circuits.batch import ActivationBatch, BatchResult, Parts, Template, parts_of
from qkan_orch.circuits.packing import binomial_p0, pack_params, unpack_counts


class LocalSamplingBackend(Backend):
    chunkable = True

    def submit(
        self,
        batch: ActivationBatch | Parts,
        shots: int | None = None,
        pack: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> Handle:
        shots, width, options = self.validate(shots, pack, options)
        assert shots is not None  # validate() requires shots on sampling backends
        start = time.perf_counter()
        metadata: dict[str, Any] = {"pack": width}
        zeros, executions = [], 0
        for k, part in enumerate(parts_of(batch)):
            if not part.num_rows:
                continue
            packed = pack_params(part.params, width)
            seeded = SeedStream.apply(options, SeedStream.PART, k) or {}
            counts = self.count_zeros(part.template, packed, width, shots, seeded, metadata)
            zeros.append(unpack_counts(counts, part.num_rows))
            executions += counts.shape[0]
        p0, se = binomial_p0(np.concatenate(zeros) if zeros else np.zeros(0), shots)
        metadata["seconds"] = time.perf_counter() - start
        result = BatchResult(p0=p0, p0_stderr=se, shots=shots, executions=executions, metadata=metadata)
        return Handle(self.name, result=result)

    @abstractmethod
    def count_zeros(
        self,
        template: Template,
        packed: np.ndarray,
        width: int,
        shots: int,
        options: dict[str, Any],
        metadata: dict[str, Any],
    ) -> np.ndarray:
        """Run every row of ``packed`` (M, W·P) with W = ``width``; return (M, W) counts of 0 per qubit.

        Implementations may add what they chose (qubits, noise) to ``metadata``.
        """
