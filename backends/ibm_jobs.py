"""A round's PUBs cut into Qiskit Runtime jobs, and a finished job's result back to ones per copy.

How many rows a job may carry is ``ibm._rows_per_job``; the cut keeps the
PUBs' rows in order, so the jobs' counts, concatenated, are the round's.
"""

from typing import Any

import numpy as np

from qkan_orch.backends.qiskit_common import ones_per_clbit


def split_pubs(pubs: list[tuple[Any, np.ndarray]], per_job: int) -> list[list[tuple[Any, np.ndarray]]]:
    """PUBs (circuit, packed values) in order, cut into jobs of at most ``per_job`` parameter rows each.

    A round that fits one job is one job, its calibration and fold-scale PUBs beside its data; a longer
    one is split in order, so the PUBs' rows still come back one part after the other.
    """
    jobs: list[list[tuple[Any, np.ndarray]]] = [[]]
    room = per_job
    for circuit, values in pubs:
        start = 0
        while start < len(values):
            if room == 0:
                jobs.append([])
                room = per_job
            take = min(room, len(values) - start)
            jobs[-1].append((circuit, values[start:start + take]))
            start += take
            room -= take
    return [job for job in jobs if job]


def job_ones(result: Any, width: int) -> np.ndarray:
    """Ones per (packed circuit, copy) of a Sampler job, its PUBs one after the other."""
    return np.concatenate([ones_per_clbit(pub.data.meas.array, width) for pub in result], axis=0)
