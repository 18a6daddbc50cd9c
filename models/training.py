"""Fitting models to data: Adam or LBFGS on the mean squared error."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from qkan_orch.models.errors import InputError
from qkan_orch.models.network import Model

OPTIMIZERS = ("adam", "lbfgs")


@dataclass(frozen=True)
class TrainResult:
    losses: list[float]

    @property
    def final_loss(self) -> float:
        return self.losses[-1]


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
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Full-batch training; ``seed`` fixes any randomness torch draws during it.

    ``callback(step, loss)`` is called after every step (the service turns it into job events).
    """
    if optimizer not in OPTIMIZERS:
        raise InputError("optimizer", f"'{optimizer}' is not one of {', '.join(OPTIMIZERS)}")
    if steps < 1:
        raise InputError("steps", f"must be ≥ 1, got {steps}")
    if x.ndim != 2 or x.shape[1] != model.in_dim:
        raise InputError("inputs", f"expected shape (n, {model.in_dim}), got {tuple(x.shape)}")
    if y.ndim != 2 or y.shape != (x.shape[0], model.out_dim):
        raise InputError("targets", f"expected shape ({x.shape[0]}, {model.out_dim}), got {tuple(y.shape)}")
    if seed is not None:
        torch.manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x, y = x.to(dtype), y.to(dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = torch.nn.MSELoss()
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr or 1e-2)
    else:
        opt = torch.optim.LBFGS(params, lr=lr or 1.0, max_iter=20, history_size=20,
                                line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    losses: list[float] = []
    model.train()
    bar = tqdm(range(steps), desc=f"train ({optimizer})", disable=not progress, leave=False)
    for step in bar:
        loss = opt.step(closure)
        losses.append(float(loss.detach()))
        bar.set_postfix(mse=f"{losses[-1]:.3e}")
        if callback is not None:
            callback(step + 1, losses[-1])
    model.eval()
    return TrainResult(losses)
