"""Benchmark our compile-and-run path against the ``qkan`` package's own solvers.

The same model (one set of parameters loaded into both), inputs, fake device and
shot count run in one process. Three measurements:

1. Noisy end-to-end inference on a fake IBM device: ``qkan``'s qiskit solver
   (one Estimator circuit per sample and edge) against ``run_plan`` on
   ``aer:<device>``, cold (first call for that packing width) and warm, for
   pack=1 and the backend's default pack. Prints wall times, speed-ups,
   circuit executions and the RMSE against the exact outputs.
2. Parameter-matrix build rate of ``compile_layer`` (rows/s).
3. Exact inference: ``run_plan`` on the ``exact`` backend against ``qkan``'s
   default exact solver, with the largest output difference.

A readable table goes to stdout, followed by one JSON line with every number;
progress messages go to stderr. Not a test and not run by CI. Run it with::

    .venv/bin/python bench/compile_and_run.py            # defaults, about a minute
    .venv/bin/python bench/compile_and_run.py --help     # widths, shots, device, repeats

Timings on a shared 2-core machine move with whatever else runs: the header
prints the CPU count and the OMP_* variables so runs can be compared.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import qiskit
import qiskit_aer
import qkan
import torch

from qkan_orch.backends import get_backend, run_plan
from qkan_orch.backends.qiskit_common import fake_backend_classes
from qkan_orch.circuits import FeedForwardPlan, compile_layer
from qkan_orch.models import Model, build_model, parse_spec

RATE_TARGET = 1e6  # rows/s that compile_layer should exceed
EXACT_RATIO_TARGET = 1.2  # ours/qkan on the exact backend should not exceed this


@dataclass
class NoisyRun:
    """One timed noisy inference."""

    label: str
    seconds: float
    executions: int
    rmse: float
    rmse_z: float
    pack: int | None = None
    rows: int = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the defaults are the reference configuration."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, nargs="+", default=[4, 8, 1], help="QKAN widths (default: 4 8 1)")
    parser.add_argument("--reps", type=int, default=3, help="data re-uploads per edge circuit (default: 3)")
    parser.add_argument("--batch", type=int, default=64, help="samples per inference (default: 64)")
    parser.add_argument("--shots", type=int, default=1000, help="shots per circuit (default: 1000)")
    parser.add_argument("--device", default="fake_sherbrooke", help="IBM fake device (default: fake_sherbrooke)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, inputs and our sampler (default: 0)")
    parser.add_argument(
        "--baseline-repeats", type=int, default=1, help="forwards of qkan's qiskit solver, ~15 s each (default: 1)"
    )
    parser.add_argument(
        "--compile-batch", type=int, default=20000, help="batch of the compile-rate measurement (default: 20000)"
    )
    parser.add_argument("--compile-repeats", type=int, default=7, help="timed compile_layer calls (default: 7)")
    parser.add_argument("--exact-repeats", type=int, default=200, help="timed exact forwards each (default: 200)")
    parser.add_argument("--exact-warmup", type=int, default=20, help="untimed exact forwards first (default: 20)")
    parser.add_argument("--skip-baseline", action="store_true", help="skip qkan's slow qiskit solver")
    args = parser.parse_args(argv)
    if len(args.width) < 2:
        parser.error("--width needs at least two layer widths")
    for name in ("reps", "batch", "shots", "baseline_repeats", "compile_batch", "compile_repeats", "exact_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.device not in fake_backend_classes():
        parser.error(f"unknown fake device '{args.device}' (known: {', '.join(sorted(fake_backend_classes()))})")
    return args


def log(message: str) -> None:
    """Progress note on stderr, so stdout holds only the report."""
    print(message, file=sys.stderr, flush=True)


def make_models(width: list[int], reps: int, seed: int) -> tuple[Model, qkan.QKAN, qkan.QKAN]:
    """Our model, and qkan's exact model with its parameters, read out as |α|−|β| and as ⟨Z⟩."""
    ours = build_model(parse_spec({"width": width, "reps": reps}), seed=seed).eval()
    exact = qkan_model(ours, width, reps)
    exact_z = qkan_model(ours, width, reps, fast_measure=False)
    return ours, exact, exact_z


def qkan_model(ours: Model, width: list[int], reps: int, **kwargs: Any) -> qkan.QKAN:
    """A ``qkan.QKAN`` holding our parameters, in eval mode (load first: eval caches folded weights)."""
    model = qkan.QKAN(list(width), reps=reps, **kwargs)
    model.load_state_dict(ours.state_dict())
    return model.eval()


def make_inputs(batch: int, in_dim: int, seed: int) -> torch.Tensor:
    """Float32 inputs uniform in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, in_dim, generator=generator) * 2 - 1


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square difference of two output arrays."""
    return float(np.sqrt(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)))


def bench_noisy(args: argparse.Namespace, model: Model, x: torch.Tensor, ref: np.ndarray, ref_z: np.ndarray) -> dict:
    """Section 1: noisy inference, ours (cold and warm, two packings) against qkan's qiskit solver."""
    name = f"aer:{args.device}"
    default_pack = get_backend(name).capabilities().default_pack
    runs: list[NoisyRun] = []
    # Default pack first: its cold call is the process's first, as in a fresh CLI invocation.
    for pack in (None, 1):
        width = default_pack if pack is None else pack
        for phase in ("cold", "warm"):
            log(f"[noisy] ours {name} pack={pack} ({phase}) ...")
            seconds, report = timed(
                lambda pack=pack: run_plan(
                    FeedForwardPlan(model, x), get_backend(name), shots=args.shots, pack=pack,
                    options={"seed": args.seed},
                )
            )
            label = f"ours pack={'default' if pack is None else pack} (W={width}) {phase}"
            runs.append(NoisyRun(label, seconds, report.executions, rmse(report.outputs, ref),
                                 rmse(report.outputs, ref_z), width, report.rows))

    baseline_executions = args.batch * sum(a * b for a, b in zip(args.width[:-1], args.width[1:], strict=True))
    baseline: list[NoisyRun] = []
    if not args.skip_baseline:
        solver_model = qkan_model(
            model, args.width, args.reps, solver="qiskit",
            solver_kwargs={"backend": fake_backend_classes()[args.device](), "shots": args.shots},
        )
        for k in range(args.baseline_repeats):
            log(f"[noisy] qkan qiskit solver on {args.device} ({k + 1}/{args.baseline_repeats}, ~15 s) ...")
            with torch.no_grad():
                seconds, y = timed(lambda: solver_model(x))
            out = y.double().numpy()
            baseline.append(NoisyRun(f"qkan qiskit #{k + 1}", seconds, baseline_executions, rmse(out, ref),
                                     rmse(out, ref_z), rows=baseline_executions))

    base_seconds = statistics.median(r.seconds for r in baseline) if baseline else None
    return {
        "backend": name,
        "default_pack": default_pack,
        "shots": args.shots,
        "baseline_seconds": base_seconds,
        "baseline_runs": [vars(r) for r in baseline],
        "baseline_executions": baseline_executions,
        "ours": [{**vars(r), "speedup": base_seconds / r.seconds if base_seconds else None} for r in runs],
    }


def bench_compile(args: argparse.Namespace, model: Model) -> dict:
    """Section 2: rows/s of compile_layer on the first QKAN layer, for the default and a large batch."""
    rng = np.random.default_rng(args.seed)
    layer = model.layers[0]
    results = []
    for batch in (args.batch, args.compile_batch):
        log(f"[compile] compile_layer batch={batch} ...")
        x = rng.uniform(-1.0, 1.0, size=(batch, layer.in_dim))
        compile_layer(layer, x)  # warm-up
        times, rows = [], 0
        for _ in range(args.compile_repeats):
            seconds, activation_batch = timed(lambda x=x: compile_layer(layer, x))
            times.append(seconds)
            rows = activation_batch.num_rows
        median = statistics.median(times)
        results.append({
            "batch": batch, "rows": rows, "requested": batch * layer.in_dim * layer.out_dim,
            "median_seconds": median, "rows_per_second": rows / median,
        })
    return {"target_rows_per_second": RATE_TARGET, "runs": results}


def bench_exact(args: argparse.Namespace, model: Model, baseline: qkan.QKAN, x: torch.Tensor) -> dict:
    """Section 3: exact backend against qkan's exact solver, interleaved so drift hits both alike."""
    log(f"[exact] {args.exact_warmup} warm-up + {args.exact_repeats} timed forwards each ...")

    def ours() -> np.ndarray:
        return run_plan(FeedForwardPlan(model, x), get_backend("exact")).outputs

    def theirs() -> torch.Tensor:
        with torch.no_grad():
            return baseline(x)

    for _ in range(args.exact_warmup):
        ours()
        theirs()
    ours_times, theirs_times = [], []
    for _ in range(args.exact_repeats):
        ours_times.append(timed(ours)[0])
        theirs_times.append(timed(theirs)[0])
    ours_median, theirs_median = statistics.median(ours_times), statistics.median(theirs_times)
    diff = float(np.max(np.abs(ours() - theirs().double().numpy())))
    return {
        "ours_median_seconds": ours_median,
        "qkan_median_seconds": theirs_median,
        "ratio_ours_over_qkan": ours_median / theirs_median,
        "target_ratio": EXACT_RATIO_TARGET,
        "max_abs_diff": diff,
        "model_dtype": str(next(model.parameters()).dtype),
    }


def environment() -> dict:
    """Versions and threading settings that the timings depend on."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "qiskit": qiskit.__version__,
        "qiskit_aer": qiskit_aer.__version__,
        "qkan": getattr(qkan, "__version__", "?"),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_env": {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "OPENBLAS_"))},
    }


def verdict(ok: bool) -> str:
    """How a number compares with its target."""
    return "ok" if ok else "MISSED"


def print_noisy(noisy: dict) -> None:
    """Table of section 1."""
    print(f"\n1. Noisy inference on {noisy['backend']}, {noisy['shots']} shots "
          f"(RMSE vs exact |α|−|β| model output, and vs exact ⟨Z⟩ read-out)")
    header = f"  {'run':<32}{'wall s':>9}{'speedup':>10}{'executions':>12}{'RMSE':>9}{'RMSE ⟨Z⟩':>10}"
    print(header)
    print("  " + "-" * (len(header) - 2))
    for r in noisy["baseline_runs"]:
        print(f"  {r['label']:<32}{r['seconds']:>9.2f}{'1.0×':>10}{r['executions']:>12}"
              f"{r['rmse']:>9.4f}{r['rmse_z']:>10.4f}")
    for r in noisy["ours"]:
        speedup = f"{r['speedup']:.1f}×" if r["speedup"] is not None else "n/a"
        print(f"  {r['label']:<32}{r['seconds']:>9.2f}{speedup:>10}{r['executions']:>12}"
              f"{r['rmse']:>9.4f}{r['rmse_z']:>10.4f}")
    print("  speedup = qkan qiskit median wall / ours; 'cold' is the first call for that packing width (the first"
          " row also pays process-wide setup); qkan runs one Estimator circuit per sample and edge.")


def print_report(args: argparse.Namespace, env: dict, noisy: dict, comp: dict, exact: dict) -> None:
    """The human-readable tables."""
    widths = "×".join(map(str, args.width))
    print(f"QKAN [{widths}] reps={args.reps}  batch={args.batch}  shots={args.shots}  "
          f"device={args.device}  seed={args.seed}")
    omp = " ".join(f"{k}={v}" for k, v in env["omp_env"].items()) or "OMP_* unset"
    print(f"python {env['python']}  torch {env['torch']}  qiskit {env['qiskit']}  qiskit-aer {env['qiskit_aer']}  "
          f"qkan {env['qkan']}  cpus={env['cpus']}  torch threads={env['torch_threads']}  {omp}")

    print_noisy(noisy)

    print("\n2. Parameter matrix build: compile_layer(model.layers[0], x)")
    print(f"  {'batch':>8}{'rows':>10}{'requested':>11}{'median ms':>11}{'rows/s':>12}  target > {RATE_TARGET:.0e}")
    for r in comp["runs"]:
        ok = verdict(r["rows_per_second"] > RATE_TARGET)
        print(f"  {r['batch']:>8}{r['rows']:>10}{r['requested']:>11}{r['median_seconds'] * 1e3:>11.3f}"
              f"{r['rows_per_second']:>12.3e}  {ok}")

    print(f"\n3. Exact inference, batch {args.batch} ({exact['model_dtype']} model), median of {args.exact_repeats}")
    print(f"  ours run_plan(exact)   {exact['ours_median_seconds'] * 1e3:8.3f} ms")
    print(f"  qkan exact forward     {exact['qkan_median_seconds'] * 1e3:8.3f} ms")
    ratio_ok = verdict(exact["ratio_ours_over_qkan"] <= EXACT_RATIO_TARGET)
    print(f"  ratio ours/qkan        {exact['ratio_ours_over_qkan']:8.3f}"
          f"     target ≤ {EXACT_RATIO_TARGET}  {ratio_ok}")
    print(f"  max |ours − qkan|      {exact['max_abs_diff']:8.2e}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    env = environment()
    model, qkan_exact, qkan_exact_z = make_models(args.width, args.reps, args.seed)
    x = make_inputs(args.batch, args.width[0], args.seed)
    with torch.no_grad():
        ref = qkan_exact(x).double().numpy()
        ref_z = qkan_exact_z(x).double().numpy()

    noisy = bench_noisy(args, model, x, ref, ref_z)
    comp = bench_compile(args, model)
    exact = bench_exact(args, model, qkan_exact, x)

    print_report(args, env, noisy, comp, exact)
    config = {k: getattr(args, k) for k in vars(args)}
    print(json.dumps({"config": config, "environment": env, "noisy": noisy, "compile": comp, "exact": exact}))


if __name__ == "__main__":
    main()
