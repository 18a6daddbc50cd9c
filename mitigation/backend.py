"""A backend with mitigation: ``expand`` before the inner backend's submit, ``reduce`` after its poll.

The wrapper is itself a ``Backend``, so the runner, chunked local rounds and
the workers drive it like any other; a pending provider handle carries the
expansion, so whichever worker polls it can reduce the result.
"""

from typing import Any

from qkan_orch.backends.base import Backend, Capabilities, Estimate, Handle, Pack, Status, round_bytes
from qkan_orch.circuits.batch import ActivationBatch, BatchResult, Parts
from qkan_orch.mitigation.expansion import Expansion, expand, plan_expansion, reduce
from qkan_orch.mitigation.readout import Assignment
from qkan_orch.mitigation.setting import Mitigation

HANDLE_KEY = "mitigation"


class MitigatedBackend(Backend):
    def __init__(self, inner: Backend, mitigation: Mitigation, assignment: Assignment | None = None) -> None:
        """``assignment``: the read-out calibration of the round this backend continues (see ``continuing``)."""
        self.inner, self.mitigation, self.assignment = inner, mitigation, assignment
        self.name = inner.name
        self.chunkable = inner.chunkable

    def capabilities(self) -> Capabilities:
        return self.inner.capabilities()

    def status(self) -> Status:
        return self.inner.status()

    def validate(self, shots: int | None, pack: Pack, options: dict[str, Any] | None
                 ) -> tuple[int | None, int, dict[str, Any]]:
        return self.inner.validate(shots, pack, options)

    def auto_pack(self, options: dict[str, Any]) -> int:
        return self.inner.auto_pack(options)

    def round_width(self, width: int, pack: Pack, rows: int) -> int:
        return self.inner.round_width(width, pack, rows)

    def submit(self, batch: ActivationBatch | Parts, shots: int | None = None, pack: Pack = None,
               options: dict[str, Any] | None = None) -> Handle:
        if not isinstance(batch, ActivationBatch):
            raise TypeError("a mitigated backend expands one batch; it takes no parts")
        resolved, width, _ = self.inner.validate(shots, pack, options)  # None: exact probabilities
        parts, layout = expand(batch, self.mitigation, self.inner.round_width(width, pack, batch.num_rows), resolved,
                               calibrated=self.assignment is not None)
        handle = self.inner.submit(parts, shots, pack, options)
        if handle.result is not None:
            handle.result = reduce(layout, self.mitigation, handle.result, self.assignment)
        else:
            handle.data[HANDLE_KEY] = layout.to_json()
        return handle

    def poll(self, handle: Handle) -> BatchResult | None:
        result = self.inner.poll(handle)
        if result is None or HANDLE_KEY not in handle.data or result.raw_p0 is not None:
            return result
        return reduce(Expansion.from_json(handle.data[HANDLE_KEY]), self.mitigation, result)

    def cancel(self, handle: Handle) -> None:
        self.inner.cancel(handle)

    def continuing(self, result: BatchResult) -> Backend:
        """Later chunks of a local round reuse the read-out calibration its first chunk measured: one per
        round, as on a provider, instead of one per chunk."""
        described = (result.metadata.get("mitigation") or {}).get("readout")
        if self.assignment is not None or not described:
            return self
        return MitigatedBackend(self.inner, self.mitigation, Assignment.from_description(described))

    def estimate(self, rows: list[int], shots: int | None, pack: Pack = None,
                 options: dict[str, Any] | None = None, columns: int = 0) -> Estimate:
        """The inner backend's quote for the expanded rounds: every scale factor and the calibration circuits."""
        resolved, width, options = self.inner.validate(shots, pack, options)
        layouts = [plan_expansion(self.mitigation, r, self.inner.round_width(width, pack, r), resolved) for r in rows]
        peak = max((sum(layout.part_rows) for layout in layouts), default=0)
        return self.inner.quote([layout.executions() for layout in layouts], resolved, pack, options,
                                round_bytes(peak, columns))

    def tasks_for(self, executions: int, shots: int, pack: Pack, options: dict[str, Any]) -> int:
        return self.inner.tasks_for(executions, shots, pack, options)

    def seconds_for(self, executions: int, shots: int, tasks: int) -> float:
        return self.inner.seconds_for(executions, shots, tasks)


def mitigated(backend: Backend, mitigation: Mitigation) -> Backend:
    """``backend`` with ``mitigation`` applied; the backend itself when there is nothing to apply."""
    return MitigatedBackend(backend, mitigation) if mitigation.active else backend



