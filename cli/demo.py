"""``qkan-orch demo``: train a small QKAN and run it on every local backend.

Shows, in one table, what the compiler saves (rows after deduplication vs
activations requested, circuit executions after packing) and how far each
backend lands from the exact simulator — shot noise alone on ideal
simulators, visibly more on noisy ones.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from backends import get_backend, run_plan
from circuits import FeedForwardPlan
from models import build_model, fit, parse_spec, save_model
from models.functions import get_function

DEMO_BACKENDS = (
    "exact", "aer", "aer:fake_sherbrooke", "aer:fake_melbourne", "braket:local",
    "braket:local_dm", "pennylane:default.qubit",
)
DEMO_SPEC = {"width": [2, 3, 1], "reps": 3}
DEMO_FUNCTION = "sin_cos"


def demo(args: argparse.Namespace) -> int:
    os.makedirs(args.out, exist_ok=True)
    progress = not args.quiet
    function = get_function(DEMO_FUNCTION)
    train_x = function.sample(256, seed=0)
    model = build_model(parse_spec(DEMO_SPEC), seed=0)
    start = time.perf_counter()
    trained = fit(
        model, train_x.float(), function(train_x).float(), optimizer="lbfgs", steps=30, progress=progress
    )
    print(
        f"trained QKAN {DEMO_SPEC['width']} reps {DEMO_SPEC['reps']} on {function.formula}: "
        f"MSE {trained.final_loss:.2e} in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    save_model(model, os.path.join(args.out, "model.safetensors"))

    inputs = function.grid(args.grid)
    target = function(inputs).numpy()[:, 0]
    entries, outputs = [], {}
    for name in args.backends.split(","):
        backend = get_backend(name)
        shots = args.shots if backend.capabilities().shot_based else None
        report = run_plan(FeedForwardPlan(model, inputs), backend, shots=shots, progress=progress)
        outputs[name] = (report.outputs[:, 0], report.stderr[:, 0])
        entries.append({
            "backend": name, "shots": shots or 0, "rows": report.rows, "requested": report.requested,
            "executions": report.executions, "seconds": round(report.seconds, 3),
        })
    exact = outputs["exact"][0] if "exact" in outputs else None
    for entry in entries:
        pred, stderr = outputs[entry["backend"]]
        entry["shot_noise"] = float(np.sqrt(np.mean(stderr**2)))
        entry["rmse_vs_target"] = float(np.sqrt(np.mean((pred - target) ** 2)))
        if exact is not None:
            entry["rmse_vs_exact"] = float(np.sqrt(np.mean((pred - exact) ** 2)))
            entry["max_error_vs_exact"] = float(np.max(np.abs(pred - exact)))
    _print_table(entries)
    report_path = os.path.join(args.out, "report.json")
    with open(report_path, "w", encoding="utf-8") as fh:
        summary = {"model": DEMO_SPEC, "function": function.formula, "samples": len(target), "backends": entries}
        json.dump(summary, fh, indent=2)
    plot_path = os.path.join(args.out, "predictions.png")
    _plot(target, outputs, plot_path, function.formula)
    print(f"wrote {report_path}, {plot_path} and model.safetensors", file=sys.stderr)
    return 0


def _print_table(entries: list[dict]) -> None:
    header = (
        f"{'backend':<26}{'shots':>7}{'rows':>6}{'of':>6}{'execs':>7}{'time s':>8}"
        f"{'RMSE':>9}{'max err':>9}{'σ shots':>9}"
    )
    print(header)
    print("-" * len(header))
    for e in entries:
        print(
            f"{e['backend']:<26}{e['shots'] or '—':>7}{e['rows']:>6}{e['requested']:>6}{e['executions']:>7}"
            f"{e['seconds']:>8.2f}{e.get('rmse_vs_exact', float('nan')):>9.4f}"
            f"{e.get('max_error_vs_exact', float('nan')):>9.4f}{e['shot_noise']:>9.4f}"
        )
    print("rows: circuits after deduplication, of: activations requested; RMSE / max err vs exact;"
          " σ shots: expected RMSE from shot noise alone")


def _plot(target: np.ndarray, outputs: dict, path: str, formula: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(outputs)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False, sharex=True, sharey=True)
    lo, hi = float(target.min()) - 0.1, float(target.max()) + 0.1
    for ax, name in zip(axes.flat, names, strict=False):
        pred, stderr = outputs[name]
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
        ax.errorbar(target, pred, yerr=stderr, fmt="o", ms=3, lw=0.8, capsize=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("target")
    for ax in axes[:, 0]:
        ax.set_ylabel("prediction")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"QKAN predictions per backend vs target {formula}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_demo(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="train a small QKAN and compare every local backend")
    d.add_argument("--out", default="qkan-demo", help="folder for the report, plot and model (default ./qkan-demo)")
    d.add_argument("--shots", type=int, default=4000, help="shots per circuit on sampling backends (default 4000)")
    d.add_argument("--grid", type=int, default=8, help="inputs: a grid of N×N points on [-1, 1]² (default 8)")
    d.add_argument("--backends", default=",".join(DEMO_BACKENDS), help="comma-separated backend names")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(handler=demo)


__all__ = ["add_demo"]
