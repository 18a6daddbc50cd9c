"""Sequence models as rounds: every gate of a time step in one round, so T steps cost T provider jobs.

Round r runs, for each LSTM layer k with 0 ≤ t = r − k < T, the four gate
QKAN layers of layer k at step t — each gate one segment of one
``ActivationBatch``, so one provider job — and T + L − 1 rounds in all for L
stacked layers (T for one). Layer k at step t needs h of layer k − 1 at step
t and its own h, c at step t − 1, both computed the round before: a
wavefront. Between rounds torch does the rest with the model's own modules:
HQKAN gates' Linear maps, the σ/tanh update (``models.sequence``), the head.

The recurrent state (h, c and their variances per layer; every h_t of the
top layer for a ``sequence`` head) lives in ``PlanState.memory``. Variances
follow the delta method element by element through

    i, f, o = σ(z)  g = tanh(z)  c' = f c + i g  h' = o tanh(c')
    Var c' = c² Var f + f² Var c + g² Var i + i² Var g
    Var h' = tanh²(c') Var o + o² (1 − tanh² c')² Var c'

treating the four gates' errors as independent. They are not quite: all four
read the same noisy h_{t−1}, and that shared part is what this leaves out
(tests/test_sequence_plan.py measures how much it matters at 10⁵ shots).
"""

import numpy as np
import torch

from qkan_orch.circuits.batch import ActivationBatch, BatchResult
from qkan_orch.circuits.compile import compile_layer
from qkan_orch.circuits.plan import PlanState, absorbable, glue, layer_output
from qkan_orch.circuits.readout import activation_stderr, activation_values
from qkan_orch.models.errors import InputError
from qkan_orch.models.sequence import GATES, GateMap, SequenceModel, combine_gates, sequence_inputs
from qkan_orch.models.spec import SequenceSpec

Memory = dict[str, np.ndarray]
RAW = "raw."  # prefix of the unmitigated chain's state, once a round brought raw p0


class SequencePlan:
    """``ExecutionPlan`` of a QKAN-LSTM or HQKAN-LSTM on (N, T, F) windows."""

    def __init__(self, model: SequenceModel, inputs: np.ndarray | torch.Tensor) -> None:
        if model.spec.kind == "lstm":
            raise InputError("model", "a classical LSTM has no quantum layers to run; evaluate it with torch")
        self.model, self.spec = model, model.spec
        self.dtype = next(model.parameters()).dtype
        self.inputs = validate_sequences(inputs, model.spec)
        self.total_rounds = self.spec.window + self.spec.layers - 1
        self._last: tuple[PlanState, ActivationBatch] | None = None

    def initial_state(self) -> PlanState:
        n, hidden = len(self.inputs), self.spec.hidden
        memory = {f"{name}.{k}": np.zeros((n, hidden)) for k in range(self.spec.layers)
                  for name in ("h", "c", "h_var", "c_var")}
        if self.spec.head == "sequence":
            memory |= {"top": np.zeros((n, self.spec.window, hidden)), "top_var": np.zeros((n, self.spec.window,
                                                                                              hidden))}
        outputs = np.zeros((n, self.spec.total_out))
        return PlanState(0, 0, outputs, outputs.copy(), memory=memory)

    def active(self, round_number: int) -> list[tuple[int, int]]:
        """(layer, step) pairs that run in a round."""
        return [(k, round_number - k) for k in range(self.spec.layers) if 0 <= round_number - k < self.spec.window]

    def next_batch(self, state: PlanState) -> ActivationBatch | None:
        if state.rounds_done >= self.total_rounds:
            return None
        if self._last is not None and self._last[0] is state:
            return self._last[1]
        parts = []
        for k, t in self.active(state.rounds_done):
            u, u_var = self._cell_input(state.memory, "", k, t)
            for name, gate in zip(GATES, self._gates(k), strict=True):
                latent = glue(gate.down, u, u_var, self.dtype)[0] if self.spec.kind == "hqkan-lstm" else u
                parts.append(compile_layer(gate.qkan, latent, name=f"{k}.{name}"))
        batch = ActivationBatch.concatenate(parts)
        self._last = (state, batch)
        return batch

    def absorb(self, state: PlanState, result: BatchResult) -> PlanState:
        batch = absorbable(self.next_batch(state), result)
        memory = self._advance(state.memory, "", batch, result.p0, result.p0_stderr, state.rounds_done)
        if result.raw_p0 is not None or RAW + "h.0" in state.memory:
            p0, se = ((result.raw_p0, result.raw_p0_stderr) if result.raw_p0 is not None
                      else (result.p0, result.p0_stderr))
            start = state.memory if RAW + "h.0" in state.memory else {RAW + k: v for k, v in state.memory.items()}
            memory |= self._advance(start, RAW, batch, p0, se, state.rounds_done)
        done = state.rounds_done + 1
        x, var, raw = state.x, state.var, None
        if done == self.total_rounds:
            x, var = self._head(memory, "")
            if RAW + "h.0" in memory:
                raw = self._head(memory, RAW)
        return PlanState(stage=done, rounds_done=done, x=x, var=var, raw=raw, memory=memory)

    def outputs(self, state: PlanState) -> tuple[np.ndarray, np.ndarray]:
        if state.rounds_done < self.total_rounds:
            raise ValueError(f"the plan is not finished ({state.rounds_done}/{self.total_rounds} rounds)")
        return state.x, np.sqrt(state.var)

    def raw_outputs(self, state: PlanState) -> tuple[np.ndarray, np.ndarray] | None:
        self.outputs(state)
        return None if state.raw is None else (state.raw[0], np.sqrt(state.raw[1]))

    def _gates(self, layer: int) -> list[GateMap]:
        return list(self.model.cells[layer].gates)  # type: ignore[arg-type]

    def _cell_input(self, memory: Memory, prefix: str, k: int, t: int) -> tuple[np.ndarray, np.ndarray]:
        """[x_t, h_{t−1}] of layer k and its variance (the inputs are exact; the layer below's h_t is not)."""
        if k == 0:
            below, below_var = self.inputs[:, t], np.zeros_like(self.inputs[:, t])
        else:
            below, below_var = memory[f"{prefix}h.{k - 1}"], memory[f"{prefix}h_var.{k - 1}"]
        return (np.concatenate([below, memory[f"{prefix}h.{k}"]], axis=1),
                np.concatenate([below_var, memory[f"{prefix}h_var.{k}"]], axis=1))

    def _advance(self, memory: Memory, prefix: str, batch: ActivationBatch, p0: np.ndarray, p0_stderr: np.ndarray,
                 round_number: int) -> Memory:
        """The state after a round, read from the state before it (every layer sees the previous round's h)."""
        acts = dict(zip((s.name for s in batch.segments), batch.scatter(activation_values(p0, batch.readout)),
                        strict=True))
        ses = dict(zip((s.name for s in batch.segments),
                       batch.scatter(activation_stderr(p0, p0_stderr, batch.readout)), strict=True))
        new = {name: v for name, v in memory.items() if name.startswith(prefix)}  # this chain's state only
        for k, t in self.active(round_number):
            u, u_var = self._cell_input(memory, prefix, k, t)
            pre = []
            for name, gate in zip(GATES, self._gates(k), strict=True):
                latent, latent_var = (glue(gate.down, u, u_var, self.dtype) if self.spec.kind == "hqkan-lstm"
                                      else (u, u_var))
                y, y_var = layer_output(gate.qkan, latent, latent_var, acts[f"{k}.{name}"], ses[f"{k}.{name}"],
                                        self.dtype)
                pre.append(glue(gate.up, y, y_var, self.dtype) if self.spec.kind == "hqkan-lstm" else (y, y_var))
            h, c, h_var, c_var = self._update(pre, memory[f"{prefix}c.{k}"], memory[f"{prefix}c_var.{k}"])
            new |= {f"{prefix}h.{k}": h, f"{prefix}c.{k}": c, f"{prefix}h_var.{k}": h_var,
                    f"{prefix}c_var.{k}": c_var}
            if k == self.spec.layers - 1 and self.spec.head == "sequence":
                for name, value in (("top", h), ("top_var", h_var)):
                    new[prefix + name] = new[prefix + name].copy()
                    new[prefix + name][:, t] = value
        return new

    def _update(self, pre: list[tuple[np.ndarray, np.ndarray]], c: np.ndarray, c_var: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """h_t, c_t by the model's own ``combine_gates``; their variances by the delta method (module doc)."""
        (zi, vzi), (zf, vzf), (zg, vzg), (zo, vzo) = pre
        with torch.no_grad():
            h, c_next = (v.double().numpy() for v in combine_gates(
                *(torch.from_numpy(z).to(self.dtype) for z in (zi, zf, zg, zo)), torch.from_numpy(c).to(self.dtype)))
        i, f, o, g = _sigmoid(zi), _sigmoid(zf), _sigmoid(zo), np.tanh(zg)
        vi, vf, vo = ((s * (1 - s)) ** 2 * v for s, v in ((i, vzi), (f, vzf), (o, vzo)))
        vg = (1 - g**2) ** 2 * vzg
        c_next_var = c**2 * vf + f**2 * c_var + g**2 * vi + i**2 * vg
        tc = np.tanh(c_next)
        return h, c_next, tc**2 * vo + (o * (1 - tc**2)) ** 2 * c_next_var, c_next_var

    def _head(self, memory: Memory, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """The model's head on h_T (``last``) or on every h_t (``sequence``, flattened to T·out)."""
        if self.spec.head == "last":
            top = self.spec.layers - 1
            return glue(self.model.head, memory[f"{prefix}h.{top}"], memory[f"{prefix}h_var.{top}"], self.dtype)
        n, steps, hidden = memory[prefix + "top"].shape
        y, var = glue(self.model.head, memory[prefix + "top"].reshape(n * steps, hidden),
                      memory[prefix + "top_var"].reshape(n * steps, hidden), self.dtype)
        return y.reshape(n, -1), var.reshape(n, -1)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def validate_sequences(inputs: np.ndarray | torch.Tensor, spec: SequenceSpec) -> np.ndarray:
    """The float64 (N, T, F) windows the model takes, or an InputError naming the problem."""
    x = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise InputError("inputs", "must be numeric")
    x = sequence_inputs(torch.from_numpy(x.astype(np.float64)), spec).numpy()
    if x.shape[0] == 0:
        raise InputError("inputs", "is empty: at least one window is needed")
    bad = ~np.isfinite(x)
    if bad.any():
        row, step, feature = np.argwhere(bad)[0]
        raise InputError("inputs", f"contains NaN or infinity (first at window {row}, step {step}, "
                                   f"feature {feature})")
    return np.ascontiguousarray(x)
