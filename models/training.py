"""Fitting models to data: Adam or LBFGS on the mean squared error, resumable after any step.

A ``Trainer`` is the one training loop: ``fit()`` (the CLI) runs it to the end,
a worker runs it for one time slice, saves ``state_to_bytes()`` and resumes it
later with ``Trainer.from_bytes``. The bytes are safetensors — parameters,
optimiser tensors and torch's RNG state as tensors, everything else (losses,
param groups, optimiser scalars) as JSON metadata — so nothing is unpickled and
a resumed run takes exactly the steps an uninterrupted one would.

With a ``noise`` device (``models.noise_aware``) the loss is that of ``NoisyForward(model, noise)``: the
outputs the device would give, so the parameters learn to compensate its noise. The device is not part of the
bytes: whoever resumes passes the same one (the worker rebuilds it from the job's options).
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from tqdm.auto import tqdm

from qkan_orch.models.errors import InputError
from qkan_orch.models.network import Model
from qkan_orch.models.noise_aware import Device, NoisyForward
from qkan_orch.models.sequence import SequenceModel, sequence_inputs
from qkan_orch.models.storage import safetensors_metadata

OPTIMIZERS = ("adam", "lbfgs")
Progress = Callable[[int, float], None]


@dataclass(frozen=True)
class TrainResult:
    losses: list[float]

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


class Trainer:
    """Full-batch training of ``model`` on (x, y) for ``steps`` optimiser steps, in as many runs as it takes."""

    def __init__(
        self,
        model: Model,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        optimizer: str = "adam",
        steps: int = 200,
        lr: float | None = None,
        seed: int | None = 0,
        noise: Device | None = None,
    ) -> None:
        """``seed`` fixes any randomness torch draws during training (the RNG state travels with the bytes);
        ``noise``: train through that device's noisy activations."""
        if optimizer not in OPTIMIZERS:
            raise InputError("optimizer", f"'{optimizer}' is not one of {', '.join(OPTIMIZERS)}")
        if steps < 1:
            raise InputError("steps", f"must be ≥ 1, got {steps}")
        if isinstance(model, SequenceModel):
            x = sequence_inputs(x, model.spec)  # (n, T, F) windows
        elif x.ndim != 2 or x.shape[1] != model.in_dim:
            raise InputError("inputs", f"expected shape (n, {model.in_dim}), got {tuple(x.shape)}")
        if y.ndim != 2 or y.shape != (x.shape[0], model.out_dim):
            raise InputError("targets", f"expected shape ({x.shape[0]}, {model.out_dim}), got {tuple(y.shape)}")
        if seed is not None:
            torch.manual_seed(seed)
        dtype = next(model.parameters()).dtype
        self.model, self.x, self.y = model, x.to(dtype), y.to(dtype)
        self.forward: torch.nn.Module = model if noise is None else NoisyForward(model, noise)
        self.optimizer_name, self.steps = optimizer, steps
        self.losses: list[float] = []
        params = [p for p in model.parameters() if p.requires_grad]
        if optimizer == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr or 1e-2)
        else:
            self.optimizer = torch.optim.LBFGS(params, lr=lr or 1.0, max_iter=20, history_size=20,
                                               line_search_fn="strong_wolfe")

    @property
    def steps_done(self) -> int:
        return len(self.losses)

    @property
    def done(self) -> bool:
        return self.steps_done >= self.steps

    def run(self, deadline: float | None = None, callback: Progress | None = None) -> None:
        """Take steps until all are done or ``time.monotonic()`` passes ``deadline`` (at least one step).

        ``callback(step, loss)`` is called after every step (the CLI's progress bar, the service's events).
        """
        loss_fn = torch.nn.MSELoss()

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad()
            loss = loss_fn(self.forward(self.x), self.y)
            loss.backward()
            return loss

        self.model.train()
        while not self.done:
            self.losses.append(float(self.optimizer.step(closure).detach()))
            if callback is not None:
                callback(self.steps_done, self.losses[-1])
            if deadline is not None and time.monotonic() > deadline:
                break
        self.model.eval()

    def state_to_bytes(self) -> bytes:
        """Everything the next step needs: parameters, optimiser state, losses, RNG state."""
        tensors = {f"model.{name}": t.detach().clone() for name, t in self.model.state_dict().items()}
        tensors["rng"] = torch.get_rng_state()
        saved = self.optimizer.state_dict()
        state = {str(pid): {key: _encode(value, f"opt.{pid}.{key}", tensors) for key, value in entries.items()}
                 for pid, entries in saved["state"].items()}
        meta = {
            "optimizer": self.optimizer_name, "steps": self.steps, "losses": self.losses, "state": state,
            "param_groups": saved["param_groups"],
        }
        return save_tensors(tensors, metadata={"trainer": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes, model: Model, x: torch.Tensor, y: torch.Tensor, noise: Device | None = None
                   ) -> "Trainer":
        """The trainer that saved ``data``, continuing on ``model`` (built from the same spec) and (x, y), through
        the same ``noise`` device it was started with."""
        tensors = load_tensors(data)
        meta = json.loads(safetensors_metadata(data)["trainer"])
        trainer = cls(model, x, y, optimizer=meta["optimizer"], steps=meta["steps"], seed=None, noise=noise)
        model.load_state_dict({name[len("model."):]: t for name, t in tensors.items() if name.startswith("model.")})
        current = trainer.optimizer.state_dict()["param_groups"]
        trainer.optimizer.load_state_dict({
            "state": {int(pid): {key: _decode(value, tensors) for key, value in entries.items()}
                      for pid, entries in meta["state"].items()},
            "param_groups": [{key: tuple(value) if isinstance(now.get(key), tuple) else value
                              for key, value in group.items()}
                             for group, now in zip(meta["param_groups"], current, strict=True)],
        })
        trainer.losses = list(meta["losses"])
        torch.set_rng_state(tensors["rng"])
        return trainer


def fit(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    optimizer: str = "adam",
    steps: int = 200,
    lr: float | None = None,
    seed: int | None = 0,
    progress: bool = True,
    callback: Progress | None = None,
    noise: Device | None = None,
) -> TrainResult:
    """Train to the end in one run, with a progress bar; ``callback(step, loss)`` after every step; with
    ``noise``, through that device's noisy activations."""
    trainer = Trainer(model, x, y, optimizer=optimizer, steps=steps, lr=lr, seed=seed, noise=noise)
    with tqdm(total=steps, desc=f"train ({optimizer})", disable=not progress, leave=False) as bar:

        def tick(step: int, loss: float) -> None:
            bar.update()
            bar.set_postfix(mse=f"{loss:.3e}")
            if callback is not None:
                callback(step, loss)

        trainer.run(callback=tick)
    return TrainResult(trainer.losses)


def _encode(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON for an optimiser state entry; its tensors go to ``tensors`` and leave their key behind."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().clone()
        return {"tensor": key}
    if isinstance(value, list | tuple):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
    return value  # int, float, bool or None


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        return tensors[value["tensor"]]
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    return value
