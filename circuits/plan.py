"""ExecutionPlan: a resumable state machine that runs a whole model in rounds.

Each round is one ActivationBatch (a QKAN layer's circuits); between rounds
the classical glue (KAN sums, Linear maps, activations) runs in torch. The
state is small and serialises to bytes, so a job persisted after any round
resumes on another machine. ``next_batch`` is a pure function of the state:
recompiling after a restart yields the identical batch, so a stored provider
result can be absorbed by a worker that never saw the submission.

Standard errors are propagated to the outputs with the first-order delta
method, treating errors of different activations as independent.

A mitigated round also reports its raw p0 (before mitigation). The state then
carries a second chain, ``raw``: each layer's output recomputed from the raw
activations and the raw chain's own inputs to the classical parts. Later
layers' circuits are compiled from the mitigated chain only (one set of
circuits per round), so for deeper models the raw outputs are "what these
rounds read, unmitigated", not a separate unmitigated run.
"""

import json
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from qkan_orch.circuits.batch import ActivationBatch, BatchResult
from qkan_orch.circuits.compile import compile_layer
from qkan_orch.circuits.packing import edge_qubits
from qkan_orch.circuits.readout import activation_stderr, activation_values
from qkan_orch.models.errors import InputError
from qkan_orch.models.layer import QKANLayer
from qkan_orch.models.network import Model
from qkan_orch.models.storage import safetensors_metadata


@dataclass
class PlanState:
    """Where a run stands: the next stage, the activations entering it and their variance."""

    stage: int
    rounds_done: int
    x: np.ndarray
    var: np.ndarray
    layer_outputs: list[np.ndarray] = field(default_factory=list)
    raw: tuple[np.ndarray, np.ndarray] | None = None  # (x, var) of the unmitigated chain, once a round has one
    activations: list[np.ndarray] = field(default_factory=list)  # per round: (samples, out, in) edge values
    edge_qubits: dict[int, np.ndarray] = field(default_factory=dict)  # placed rounds: packing.edge_qubits
    memory: dict[str, np.ndarray] = field(default_factory=dict)  # a sequence plan's recurrent state (h, c, …)

    def to_bytes(self) -> bytes:
        arrays = {"x": self.x, "var": self.var}
        arrays.update({f"layer_output.{k}": v for k, v in enumerate(self.layer_outputs)})
        arrays.update({f"activation.{k}": v for k, v in enumerate(self.activations)})
        arrays.update({f"edge_qubit.{k}": v for k, v in self.edge_qubits.items()})
        arrays.update({f"memory.{name}": v for name, v in self.memory.items()})
        if self.raw is not None:
            arrays.update(raw_x=self.raw[0], raw_var=self.raw[1])
        meta = {"stage": self.stage, "rounds_done": self.rounds_done, "layers": len(self.layer_outputs)}
        return save_arrays(arrays, metadata={"plan_state": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> "PlanState":
        arrays = load_arrays(data)
        meta = json.loads(safetensors_metadata(data)["plan_state"])
        return cls(
            stage=meta["stage"],
            rounds_done=meta["rounds_done"],
            x=arrays["x"],
            var=arrays["var"],
            layer_outputs=[arrays[f"layer_output.{k}"] for k in range(meta["layers"])],
            raw=(arrays["raw_x"], arrays["raw_var"]) if "raw_x" in arrays else None,
            activations=[arrays[f"activation.{k}"] for k in range(meta["layers"]) if f"activation.{k}" in arrays],
            edge_qubits={k: arrays[f"edge_qubit.{k}"] for k in range(meta["layers"]) if f"edge_qubit.{k}" in arrays},
            memory={k.removeprefix("memory."): v for k, v in arrays.items() if k.startswith("memory.")},
        )


class ExecutionPlan(Protocol):
    """What workers and ``run_plan`` drive: any model whose inference is rounds of activation batches."""

    total_rounds: int
    inputs: np.ndarray  # as validated: samples × features, or samples × steps × features for sequences

    def initial_state(self) -> PlanState: ...

    def next_batch(self, state: PlanState) -> ActivationBatch | None: ...

    def absorb(self, state: PlanState, result: BatchResult) -> PlanState: ...

    def outputs(self, state: PlanState) -> tuple[np.ndarray, np.ndarray]: ...

    def raw_outputs(self, state: PlanState) -> tuple[np.ndarray, np.ndarray] | None: ...


class FeedForwardPlan:
    """QKAN and HQKAN: stages in order, one round per QKAN layer."""

    def __init__(self, model: Model, inputs: np.ndarray | torch.Tensor) -> None:
        self.stages = model.stages()
        self.dtype = next(model.parameters()).dtype
        self.inputs = validate_inputs(inputs, model.in_dim)
        self.total_rounds = sum(isinstance(s, QKANLayer) for s in self.stages)
        self._last: tuple[PlanState, ActivationBatch] | None = None

    def initial_state(self) -> PlanState:
        state = PlanState(0, 0, self.inputs, np.zeros_like(self.inputs))
        return self._run_glue(state)

    def next_batch(self, state: PlanState) -> ActivationBatch | None:
        if state.stage >= len(self.stages):
            return None
        if self._last is not None and self._last[0] is state:
            return self._last[1]  # absorb right after next_batch: reuse the compiled batch
        batch = compile_layer(self.stages[state.stage], state.x, name=f"stage{state.stage}")
        self._last = (state, batch)
        return batch

    def absorb(self, state: PlanState, result: BatchResult) -> PlanState:
        batch = absorbable(self.next_batch(state), result)
        layer: QKANLayer = self.stages[state.stage]  # type: ignore[assignment]
        y, var, act = _layer_output(layer, batch, state.x, state.var, result.p0, result.p0_stderr, self.dtype)
        raw = None
        if result.raw_p0 is not None or state.raw is not None:
            raw_x, raw_var = state.raw if state.raw is not None else (state.x, state.var)
            p0, se = ((result.raw_p0, result.raw_p0_stderr) if result.raw_p0 is not None
                      else (result.p0, result.p0_stderr))
            raw = _layer_output(layer, batch, raw_x, raw_var, p0, se, self.dtype)[:2]  # type: ignore[arg-type]
        placed = dict(state.edge_qubits)
        if result.qubits:
            (segment,) = batch.segments
            placed[state.rounds_done] = edge_qubits(segment.slots, result.qubits)
        nxt = PlanState(
            stage=state.stage + 1,
            rounds_done=state.rounds_done + 1,
            x=y,
            var=var,
            layer_outputs=[*state.layer_outputs, y],
            raw=raw,
            activations=[*state.activations, act],
            edge_qubits=placed,
        )
        return self._run_glue(nxt)

    def outputs(self, state: PlanState) -> tuple[np.ndarray, np.ndarray]:
        """Model outputs and their standard errors once the plan is finished."""
        if state.stage < len(self.stages):
            raise ValueError(f"the plan is not finished ({state.rounds_done}/{self.total_rounds} rounds)")
        return state.x, np.sqrt(state.var)

    def raw_outputs(self, state: PlanState) -> tuple[np.ndarray, np.ndarray] | None:
        """Outputs and standard errors read from the raw (unmitigated) p0; None if no round was mitigated."""
        self.outputs(state)  # the same check that the plan is finished
        return None if state.raw is None else (state.raw[0], np.sqrt(state.raw[1]))

    def _run_glue(self, state: PlanState) -> PlanState:
        """Apply classical stages until the next QKAN layer (or the end)."""
        while state.stage < len(self.stages) and not isinstance(self.stages[state.stage], QKANLayer):
            stage = self.stages[state.stage]
            y, var = glue(stage, state.x, state.var, self.dtype)
            raw = None if state.raw is None else glue(stage, *state.raw, self.dtype)
            state = PlanState(state.stage + 1, state.rounds_done, y, var, state.layer_outputs, raw, state.activations,
                              state.edge_qubits)
        return state


def absorbable(batch: ActivationBatch | None, result: BatchResult) -> ActivationBatch:
    """The round's batch, if ``result`` is its result: a finished plan or a result of another size is a bug."""
    if batch is None:
        raise ValueError("the plan is finished; there is no batch to absorb")
    if result.p0.shape != (batch.num_rows,):
        raise ValueError(f"result has {result.p0.shape[0]} rows, the batch {batch.num_rows}")
    return batch


def glue(stage: torch.nn.Module, x_in: np.ndarray, var_in: np.ndarray, dtype: torch.dtype
          ) -> tuple[np.ndarray, np.ndarray]:
    """A classical stage applied to values and (delta method) their variances."""
    x = torch.from_numpy(x_in).to(dtype)
    with torch.no_grad():
        y = stage(x).double().numpy()
    return y, _propagate(stage, x, var_in) if var_in.any() else np.zeros_like(y)


def _layer_output(layer: QKANLayer, batch: ActivationBatch, x_in: np.ndarray, var_in: np.ndarray,
                  p0: np.ndarray, p0_stderr: np.ndarray, dtype: torch.dtype
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A QKAN layer's output from its inputs and its circuits' p0, its variance from both, and the edge
    activations (samples, out, in) it combined."""
    (act,) = batch.scatter(activation_values(p0, batch.readout))
    (act_se,) = batch.scatter(activation_stderr(p0, p0_stderr, batch.readout))
    y, var = layer_output(layer, x_in, var_in, act, act_se, dtype)
    return y, var, act


def layer_output(layer: QKANLayer, x_in: np.ndarray, var_in: np.ndarray, act: np.ndarray, act_se: np.ndarray,
                 dtype: torch.dtype) -> tuple[np.ndarray, np.ndarray]:
    """A QKAN layer's output from its inputs and measured edge activations (samples, out, in), and its variance:
    the activations' (independent edges, each weighted by its post-activation weight) plus the inputs'
    carried through the layer's derivative (delta method)."""
    x = torch.from_numpy(x_in).to(dtype)
    with torch.no_grad():
        y = layer.combine(x, torch.from_numpy(act).to(dtype)).double().numpy()
    var = np.zeros_like(y)
    if act_se.any():  # analytic results carry no error: skip the propagation
        weights = layer.edge_weights().detach().double().numpy()
        var = np.einsum("boi,oi->bo", act_se**2, weights**2)
    if var_in.any():
        var = var + _propagate(layer, x, var_in)
    return y, var


def validate_inputs(inputs: np.ndarray | torch.Tensor, in_dim: int) -> np.ndarray:
    """The float64 (B, in_dim) array the model can run on, or an InputError naming the problem."""
    x = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise InputError("inputs", "must be numeric")
    x = x.astype(np.float64)
    if x.ndim == 1 and in_dim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise InputError("inputs", f"must be a 2-D array (samples × {in_dim}), got {x.ndim}-D")
    if x.shape[0] == 0:
        raise InputError("inputs", "is empty: at least one sample is needed")
    if x.shape[1] != in_dim:
        raise InputError("inputs", f"has {x.shape[1]} columns, the model takes {in_dim}")
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError("inputs", f"contains NaN or infinity (first at row {row}, column {col})")
    return np.ascontiguousarray(x)


def _propagate(fn: torch.nn.Module, x: torch.Tensor, var: np.ndarray) -> np.ndarray:
    """Var of fn(x) from Var of x: Σ_i (∂fn_o/∂x_i)² Var x_i, per sample (fn acts row-wise)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = fn(x)
        rows = [
            torch.autograd.grad(y[:, o].sum(), x, retain_graph=o + 1 < y.shape[1])[0]
            for o in range(y.shape[1])
        ]
    jac = torch.stack(rows, dim=1).double().numpy()  # (B, out, in)
    return np.einsum("boi,bi->bo", jac**2, var)
