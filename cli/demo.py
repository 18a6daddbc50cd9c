"""``qkan-orch demo``: train a small QKAN and run it on every local backend through the service.

The backends run as one comparison against the exact simulator (``POST
/v1/comparisons``): a job each on the real service path — client → REST API
→ Redis broker → Celery worker → SQL store — started here with the embedded
defaults (or an existing service given by ``--url``). One table shows what
the compiler saves (rows after deduplication vs activations requested,
circuit executions after packing) and, from the comparison's agreement, how
far each backend lands from exact: shot noise alone on ideal simulators
(χ² p not tiny), visibly more on noisy ones before mitigation — which the
demo applies there only (read-out correction and zero-noise extrapolation,
``mitigation_per_backend``) and shows beside the raw reading.
"""

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qkan_orch.cli.compare import follow
from qkan_orch.client import Client, JobState

if TYPE_CHECKING:  # torch loads when the demo runs, not with every CLI command
    from qkan_orch.client import Compared
    from qkan_orch.models import Model
    from qkan_orch.models.training import TrainResult

DEMO_BACKENDS = (
    "exact", "aer", "aer:fake_sherbrooke", "aer:fake_melbourne", "braket:local",
    "braket:local_dm", "pennylane:default.qubit", "ibm:fake_torino",
)
DEMO_SPEC = {"width": [2, 3, 1], "reps": 3}
DEMO_FUNCTION = "sin_cos"
REFERENCE = "exact"


def demo_model(progress: bool = False) -> tuple["Model", "TrainResult"]:
    """The demo's model, trained as the demo trains it; benchmarks and tests use the very same."""
    from qkan_orch.models import build_model, fit, parse_spec
    from qkan_orch.models.functions import get_function

    function = get_function(DEMO_FUNCTION)
    train_x = function.sample(256, seed=0)
    model = build_model(parse_spec(DEMO_SPEC), seed=0)
    trained = fit(model, train_x.float(), function(train_x).float(), optimizer="lbfgs", steps=30, progress=progress)
    return model, trained


def demo(args: argparse.Namespace) -> int:
    from qkan_orch.models import save_model
    from qkan_orch.models.functions import get_function

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    function = get_function(DEMO_FUNCTION)
    start = time.perf_counter()
    model, trained = demo_model(progress)
    _say(f"trained QKAN {DEMO_SPEC['width']} reps {DEMO_SPEC['reps']} on {function.formula}: "
         f"MSE {trained.final_loss:.2e} in {time.perf_counter() - start:.1f} s")
    save_model(model, str(out / "model.safetensors"))
    inputs = function.grid(args.grid).numpy()
    target = function(function.grid(args.grid)).numpy()[:, 0]

    compared = [b.strip() for b in args.backends.split(",") if b.strip() and b.strip() != REFERENCE]
    with ExitStack() as stack:
        qc = stack.enter_context(_service(args, out, stack))
        model_id = qc.upload_model(out / "model.safetensors", name="demo").id
        created = qc.compare(model_id, inputs, compared, reference=REFERENCE, shots=args.shots,
                             mitigation_per_backend=_mitigation_per_backend(compared))
        _say(f"comparison {created.id}: {REFERENCE} and {len(compared)} backends on {len(inputs)} inputs, a job each")
        done = follow(qc, created.id, not progress)
        everyone = [done.reference, *done.backends]
        failed = [f"{c.backend}: job {c.job.state}: {c.job.error.message if c.job.error else ''}"
                  for c in everyone if c.job.state != JobState.SUCCEEDED]
        if failed:
            raise RuntimeError("; ".join(failed))
        results = {c.backend: qc.job_result(c.job.id) for c in everyone}
    outputs = {name: (np.asarray(r.outputs)[:, 0], np.asarray(r.stderr)[:, 0]) for name, r in results.items()}
    raw = {name: np.asarray(r.raw_outputs)[:, 0] for name, r in results.items() if r.raw_outputs is not None}
    entries = [_entry(c, outputs[c.backend][0], target) for c in everyone]
    _print_table(entries)
    summary = {"model": DEMO_SPEC, "function": function.formula, "samples": len(target), "comparison_id": done.id,
               "reference": REFERENCE, "backends": entries}
    (out / "report.json").write_text(json.dumps(summary, indent=2))
    _plot(target, outputs, str(out / "predictions.png"), function.formula)
    written = [out / "report.json", out / "predictions.png"]
    if raw:
        _plot_mitigation(outputs[REFERENCE][0], outputs, raw, str(out / "mitigation.png"))
        written.append(out / "mitigation.png")
    _say(f"wrote {', '.join(str(p) for p in written)} and {out / 'model.safetensors'}")
    return 0


def _mitigation_per_backend(names: list[str]) -> dict[str, str]:
    """Read-out correction and zero-noise extrapolation where there is noise; the others keep the service's
    default (none on ideal simulators), so their χ² shows shot noise alone."""
    from qkan_orch.backends import get_backend

    return {name: "readout+zne" for name in names
            if get_backend(name).capabilities().kind in ("noisy simulator", "qpu")}


def _service(args: argparse.Namespace, out: Path, stack: ExitStack) -> Client:
    """A client of ``--url``, or of a service started here with the embedded defaults."""
    if args.url:
        return Client(args.url, args.api_key)
    from qkan_orch.service.local import LocalService

    _say(f"starting the service (embedded Redis, SQLite, one worker) in {out / 'service'} …")
    service = stack.enter_context(LocalService(out / "service", {"QKAN_LOG_LEVEL": "WARNING"}))
    _say(f"service up at {service.url}")
    return Client(service.url, service.create_key("demo"))


def _entry(compared: "Compared", pred: np.ndarray, target: np.ndarray) -> dict:
    """One backend's row: its job's usage and the comparison's agreement with exact (the reference's own row
    has none: it agrees with itself, RMSE 0, and being analytic has no shot noise)."""
    job, found, raw = compared.job, compared.agreement, compared.raw_agreement
    entry = {
        "backend": compared.backend, "job_id": job.id, "mitigation": (job.mitigation or {}).get("method", "none"),
        "shots": job.shots or 0, "shots_used": job.shots_used, "rows": sum(r.rows for r in job.rounds),
        "requested": sum(r.requested for r in job.rounds), "executions": job.executions,
        "seconds": round(job.run_seconds or 0.0, 3), "rmse_vs_target": float(np.sqrt(np.mean((pred - target) ** 2))),
        "rmse_vs_exact": 0.0, "max_error_vs_exact": 0.0, "shot_noise": 0.0,
    }
    if found is not None:
        entry.update(rmse_vs_exact=found.rmse, max_error_vs_exact=found.max_error, shot_noise=found.sigma,
                     p_value=found.p_value, mean_z2=found.mean_z2, slope=found.slope)
    if raw is not None:  # the same rounds read without mitigation
        entry.update(raw_rmse_vs_exact=raw.rmse, raw_p_value=raw.p_value, raw_slope=raw.slope)
    return entry


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _print_table(entries: list[dict]) -> None:
    header = (
        f"{'backend':<24}{'mitigation':>12}{'shots':>7}{'rows':>6}{'of':>6}{'execs':>7}{'time s':>8}"
        f"{'raw RMSE':>10}{'RMSE':>9}{'max err':>9}{'σ shots':>9}{'χ² p':>9}"
    )
    print(header)
    print("-" * len(header))
    for e in entries:
        raw = f"{e['raw_rmse_vs_exact']:.4f}" if "raw_rmse_vs_exact" in e else "—"
        p_value = f"{e['p_value']:.2g}" if "p_value" in e else "—"
        print(
            f"{e['backend']:<24}{e['mitigation']:>12}{e['shots'] or '—':>7}{e['rows']:>6}{e['requested']:>6}"
            f"{e['executions']:>7}{e['seconds']:>8.2f}{raw:>10}{e['rmse_vs_exact']:>9.4f}"
            f"{e['max_error_vs_exact']:>9.4f}{e['shot_noise']:>9.4f}{p_value:>9}"
        )
    print(f"rows: circuits after deduplication, of: activations requested, execs: circuits run (calibration and "
          f"fold scales included); raw RMSE: the same rounds without mitigation; RMSE / max err vs {REFERENCE}; "
          "σ shots: expected RMSE from shot noise alone; χ² p: the chance of differences this large if shot noise "
          "alone caused them (tiny: noise the errors do not report), over the samples that share no circuit")


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


def _plot_mitigation(exact: np.ndarray, outputs: dict, raw: dict, path: str) -> None:
    """Per mitigated backend: raw and mitigated outputs against the exact ones, with their error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(raw)
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.4), squeeze=False, sharey=True)
    lo, hi = float(exact.min()) - 0.1, float(exact.max()) + 0.1
    for ax, name in zip(axes[0], names, strict=True):
        pred, stderr = outputs[name]
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
        ax.plot(exact, raw[name], "o", ms=3, color="tab:red", label="raw")
        ax.errorbar(exact, pred, yerr=stderr, fmt="o", ms=3, lw=0.8, capsize=0, color="tab:blue", label="mitigated")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("exact")
    axes[0, 0].set_ylabel("output")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("raw vs mitigated (read-out + ZNE) vs exact", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_demo(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="train a small QKAN and compare every local backend")
    d.add_argument("--out", default="qkan-demo", help="folder for the report, plot and model (default ./qkan-demo)")
    d.add_argument("--shots", type=int, default=4000, help="shots per circuit on sampling backends (default 4000)")
    d.add_argument("--grid", type=int, default=8, help="inputs: a grid of N×N points on [-1, 1]² (default 8)")
    d.add_argument("--backends", default=",".join(DEMO_BACKENDS), help="comma-separated backend names")
    d.add_argument("--url", help="use a running service instead of starting one (with --api-key)")
    d.add_argument("--api-key", default=os.environ.get("QKAN_API_KEY"))
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(handler=demo)


__all__ = ["add_demo"]
