"""Is the comparisons' χ² p-value calibrated? Ideal runs with shots, against ``exact``, many times over.

A run with shot noise alone must give p < 0.01 in 1 % of runs and p < 10⁻⁴ in
0.01 %. P(χ²_n ≥ Σ z²) assumes the n output errors are independent; the
compiler deduplicates circuits per edge and input value, so samples with an
input value in common share that circuit's shot noise, Σ z² over them spreads
wider than χ²_n and the p-value comes out too small. ``comparisons.agreement``
therefore counts only the samples ``independent_samples`` picks (no input
value in common). This script measures both on the demo's model: its 8×8 grid
(each value 8 times per column; 8 samples picked) and the same grid jittered
by ±10⁻⁶ (no value repeated; all 64 picked) — p over every sample, as before,
and over the independent ones, as now.

The backend is ``emulate:dm`` with its noise off: exact p0, then Binomial(shots, p0) zeros per row — shot noise
alone, as an ideal shot-based simulator gives it (the demo saw the same on Aer, Braket's and PennyLane's).

    .venv/bin/python bench/agreement_calibration.py            # 400 runs per input set, about ten seconds
"""

import argparse
import sys

import numpy as np

from qkan_orch.backends import get_backend
from qkan_orch.backends.runner import run_plan
from qkan_orch.circuits import plan_for
from qkan_orch.cli.demo import demo_model
from qkan_orch.comparisons import agreement, independent_samples
from qkan_orch.models.functions import get_function

IDEAL = {"noise": False}


def calibration(model: object, inputs: np.ndarray, runs: int, shots: int) -> dict[str, dict[str, float]]:
    """Mean z² (its mean and spread over runs), and how often p falls under 0.01 and 10⁻⁴ counting every sample
    and counting the independent ones."""
    plan = plan_for(model, inputs)  # a plan keeps no run's state: one serves every run
    exact = run_plan(plan, get_backend("exact")).outputs
    emulator, independent = get_backend("emulate:dm"), independent_samples(inputs)
    runs_ = [run_plan(plan, emulator, shots=shots, options={**IDEAL, "seed": k}) for k in range(runs)]
    out = {}
    for name, mask in (("every sample", None), ("independent", independent)):
        found = [agreement(r.outputs, r.stderr, exact, independent=mask) for r in runs_]
        counted = slice(None) if mask is None else mask
        z2 = np.array([np.mean(((r.outputs - exact) / r.stderr)[counted] ** 2) for r in runs_])  # over the counted
        p = np.array([a.p_value for a in found])
        out[name] = {"n": found[0].chi2_n, "mean_z2": float(z2.mean()), "spread": float(z2.std(ddof=1)),
                     "independent_spread": float(np.sqrt(2 / found[0].chi2_n)), "p<0.01": float(np.mean(p < 0.01)),
                     "p<1e-4": float(np.mean(p < 1e-4)), "min_p": float(p.min())}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400, help="runs per input set (default 400)")
    parser.add_argument("--shots", type=int, default=4000, help="shots per circuit (default 4000, as the demo)")
    args = parser.parse_args(argv)
    model, _ = demo_model()
    grid = get_function("sin_cos").grid(8).numpy()
    jittered = grid + np.random.default_rng(0).uniform(-1e-6, 1e-6, grid.shape)
    print(f"{args.runs} ideal runs at {args.shots} shots per input set, demo model, against exact")
    print(f"{'inputs, samples counted':>36} {'n':>4} {'mean z²':>8} {'spread':>7} {'if indep.':>9} {'p<0.01':>7} "
          f"{'p<1e-4':>7} {'min p':>8}")
    for name, inputs in (("8×8 grid (shared)", grid), ("jittered (none shared)", jittered)):
        for counted, c in calibration(model, inputs, args.runs, args.shots).items():
            print(f"{name + ', ' + counted:>36} {c['n']:>4} {c['mean_z2']:8.3f} {c['spread']:7.3f} "
                  f"{c['independent_spread']:9.3f} {c['p<0.01']:7.1%} {c['p<1e-4']:7.2%} {c['min_p']:8.1e}")
    print("calibrated: p<0.01 in 1 % of runs, p<1e-4 in 0.01 %; the spread of mean z² as if independent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
