"""Issue 14 item 3's acceptance: the demo model trained noise-free and noise-aware, run on ``aer:<device>``.

Both are ``qkan-orch demo``'s architecture, function, training data, seed and steps (``cli.demo``); the
noise-aware one trains through ``models.noise_aware.NoisyForward`` on the device's emulated noise, on the qubits
``aer:<device>`` packs onto by default. Each then runs the demo's grid on ``aer:<device>`` (``--shots`` per
circuit, seeded) without mitigation and with read-out mitigation, and on ``emulate:<device>`` (exact noisy
probabilities: the same runs without shot noise). Prints RMSE vs the target per run and the ratio noise-free /
noise-aware; the acceptance is a ratio ≥ 1.5 on ``aer:<device>`` without mitigation. Run it with::

    nice -n 10 .venv/bin/python bench/noise_aware.py            # about a minute on 2 cores
"""

import argparse
import sys
import time

import numpy as np
import torch

from qkan_orch.backends import get_backend, run_plan
from qkan_orch.backends.emulator import emulated_device
from qkan_orch.circuits import plan_for
from qkan_orch.cli.demo import DEMO_FUNCTION, DEMO_SPEC
from qkan_orch.mitigation import Mitigation, mitigated
from qkan_orch.models import Model, build_model, fit, parse_spec
from qkan_orch.models.functions import get_function

ACCEPTANCE = 1.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="fake_melbourne", help="IBM fake device (default: fake_melbourne)")
    parser.add_argument("--grid", type=int, default=8, help="grid points per axis, as the demo (default: 8)")
    parser.add_argument("--shots", type=int, default=4000, help="shots per circuit, as the demo (default: 4000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of aer's sampling (default: 1)")
    return parser.parse_args(argv)


def trained(noise: str | None) -> Model:
    """``cli.demo.demo_model``'s training, through ``noise``'s emulated device when given."""
    function = get_function(DEMO_FUNCTION)
    train_x = function.sample(256, seed=0)
    model = build_model(parse_spec(DEMO_SPEC), seed=0)
    fit(model, train_x.float(), function(train_x).float(), optimizer="lbfgs", steps=30, progress=False,
        noise=emulated_device(noise) if noise else None)
    return model


def rmse(model: Model, backend: str, mitigation: str, inputs: np.ndarray, target: np.ndarray, shots: int | None,
         seed: int) -> float:
    found = get_backend(backend)
    runner = mitigated(found, Mitigation.parse(mitigation, found.capabilities()))
    options = {"seed": seed} if shots else None
    outputs = run_plan(plan_for(model, inputs), runner, shots=shots, options=options).outputs[:, 0]
    return float(np.sqrt(np.mean((outputs - target) ** 2)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    function = get_function(DEMO_FUNCTION)
    grid = function.grid(args.grid)
    inputs, target = grid.numpy(), function(grid).numpy()[:, 0]
    models = {}
    for label, noise in (("noise-free", None), (f"noise-aware ({args.device})", args.device)):
        start = time.perf_counter()
        models[label] = trained(noise)
        print(f"trained {label} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    runs = [("exact", "none", None), (f"aer:{args.device}", "none", args.shots),
            (f"aer:{args.device}", "readout", args.shots), (f"emulate:{args.device}", "none", None),
            (f"emulate:{args.device}", "readout", args.shots)]
    names = list(models)
    print(f"demo QKAN {DEMO_SPEC['width']} reps {DEMO_SPEC['reps']} on {function.formula}, {len(inputs)} grid inputs;"
          f" RMSE vs target")
    print(f"{'backend':<26}{'mitigation':>11}{'shots':>7}{names[0]:>14}{'noise-aware':>14}{'ratio':>8}")
    ratios = {}
    for backend, mitigation, shots in runs:
        free, aware = (rmse(models[n], backend, mitigation, inputs, target, shots, args.seed) for n in names)
        ratios[(backend, mitigation)] = free / aware
        print(f"{backend:<26}{mitigation:>11}{shots or '—':>7}{free:>14.4f}{aware:>14.4f}{free / aware:>8.2f}")
    ratio = ratios[(f"aer:{args.device}", "none")]
    verdict = "met" if ratio >= ACCEPTANCE else "NOT met"
    print(f"acceptance (aer:{args.device}, no mitigation, ratio ≥ {ACCEPTANCE}): {ratio:.2f} — {verdict}")
    return 0 if ratio >= ACCEPTANCE else 1


if __name__ == "__main__":
    sys.exit(main())
