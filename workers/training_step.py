"""Training of a claimed job in time slices, like inference rounds.

A step restores the trainer from the job's ``plan_state`` (safetensors bytes:
parameters, optimiser state, losses), takes optimiser steps until the time
slice is used, and either saves it there and yields, or stores the trained
model and succeeds. A cancel therefore takes effect between two slices. A noise-aware job's options carry the
device and qubits the API resolved; every slice trains through that device's emulated noise, and the stored
model records it.
"""

import time

import numpy as np
import torch

from qkan_orch.backends.emulator import EmulatedDevice
from qkan_orch.models import build_model, parse_spec
from qkan_orch.models.training import Trainer
from qkan_orch.service.store.arrays import pack_arrays, unpack_arrays
from qkan_orch.service.store.models import insert_model
from qkan_orch.workers.claimed_job import ClaimedJob, Step


def train(claimed: ClaimedJob) -> Step:
    job, writes = claimed.job, claimed.writes
    options = job.options
    data = unpack_arrays(job.inputs)
    x, y = torch.from_numpy(data["x"]).float(), torch.from_numpy(data["y"]).float()
    model = build_model(parse_spec(options["spec"]), seed=options.get("seed"))
    trained_for = options.get("noise")
    noise = EmulatedDevice(trained_for["device"], tuple(trained_for["qubits"])) if trained_for else None
    if job.plan_state:
        trainer = Trainer.from_bytes(job.plan_state, model, x, y, noise=noise)
    else:
        trainer = Trainer(model, x, y, optimizer=options["optimizer"], steps=int(options["steps"]),
                          lr=options.get("lr"), seed=options.get("seed"), noise=noise)
    every = max(1, trainer.steps // 10)

    def report(step: int, loss: float) -> None:
        """Progress every tenth of the steps, committed at once so the event stream shows it."""
        if step % every == 0 or step == trainer.steps:
            writes.event("train", step=step, of=trainer.steps, loss=loss)
            writes.commit_log()

    trainer.run(deadline=time.monotonic() + claimed.settings.task_slice_seconds, callback=report)
    if not trainer.done:  # the slice is used: say where it stopped, with the state the next step resumes from
        if trainer.steps_done % every:
            writes.event("train", step=trainer.steps_done, of=trainer.steps, loss=trainer.losses[-1])
        return claimed.again(0.0, plan_state=trainer.state_to_bytes())
    name = options.get("name") or f"trained-{job.id[:8]}"
    row = insert_model(claimed.session, job.owner_id, name, model, source="train", noise=trained_for)
    losses = np.asarray(trainer.losses, dtype=np.float64)
    return claimed.succeed(pack_arrays({"losses": losses}), {"model_id": row.id, "final_loss": trainer.losses[-1]},
                           model_id=row.id)
