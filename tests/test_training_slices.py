"""Training in slices: a trainer saved after any step and resumed from its bytes ends where fit() ends."""

import pytest
import torch

from qkan_orch.models import build_model, fit, parse_spec
from qkan_orch.models.functions import get_function
from qkan_orch.models.training import Trainer

SPEC = {"width": [1, 2, 1], "reps": 2, "preact_trainable": True}
STEPS = {"adam": 12, "lbfgs": 6}


def data() -> tuple[torch.Tensor, torch.Tensor]:
    f = get_function("sin")
    x = f.sample(32, seed=1).double()
    return x, f(x).double()


def tiny_model() -> torch.nn.Module:
    return build_model(parse_spec(SPEC), seed=3).double()


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
@pytest.mark.parametrize("split", [1, 2, 5])
def test_resuming_from_bytes_is_the_uninterrupted_run(optimizer: str, split: int) -> None:
    x, y = data()
    steps = STEPS[optimizer]
    whole = tiny_model()
    expected = fit(whole, x, y, optimizer=optimizer, steps=steps, progress=False).losses

    first = Trainer(tiny_model(), x, y, optimizer=optimizer, steps=steps)
    while first.steps_done < split:
        first.run(deadline=0.0)  # a slice that is over at once still takes one step
    saved = first.state_to_bytes()
    torch.manual_seed(12345)  # another job ran in between and drew from torch's RNG
    resumed = Trainer.from_bytes(saved, tiny_model(), x, y)  # a fresh model: every parameter comes from the bytes
    assert resumed.steps_done == split and not resumed.done
    resumed.run()

    assert resumed.done and resumed.losses == expected
    for (name, got), want in zip(resumed.model.state_dict().items(), whole.state_dict().values(), strict=True):
        assert torch.equal(got, want), name


def test_a_trainer_saved_in_every_step_still_matches() -> None:
    x, y = data()
    expected = fit(tiny_model(), x, y, optimizer="lbfgs", steps=4, progress=False).losses
    trainer = Trainer(tiny_model(), x, y, optimizer="lbfgs", steps=4)
    while not trainer.done:
        trainer.run(deadline=0.0)
        trainer = Trainer.from_bytes(trainer.state_to_bytes(), tiny_model(), x, y)
    assert trainer.losses == expected

