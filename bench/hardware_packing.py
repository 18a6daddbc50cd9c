"""Calibrated packing on an IBM device in Qiskit Runtime's local testing mode.

QKAN [4, 8, 1], reps 3, batch 64 (defaults) on ``ibm:fake_sherbrooke`` runs
three ways in one process, all against the exact outputs of the same model:

1. ours, ``pack=1``: one edge circuit per execution;
2. ours, ``pack="auto"``: the width and physical qubits chosen from the
   device's calibration (read-out, √X error, T2 thresholds);
3. the ``qkan`` package's qiskit solver (one circuit per sample and edge),
   counting the primitive jobs it submits through its job-event callback.

It prints circuit executions, provider jobs, RMSE against exact and wall
time, then the two ratios the packing goal is about: executions(W=1) /
executions(auto) (goal ≥ 20) and RMSE(auto) / RMSE(W=1) (goal ≤ 1.5). The
wall time of local testing says nothing about a QPU (there, a W-wide circuit
costs what a 1-wide one does); the executions and jobs are what a QPU bills.

    .venv/bin/python bench/hardware_packing.py          # about 3 minutes
    .venv/bin/python bench/hardware_packing.py --help
"""

import argparse
import json
import sys
import warnings
from collections import Counter
from typing import Any

import torch
from compile_and_run import log, make_inputs, make_models, qkan_model, rmse, timed

from qkan_orch.backends import get_backend, run_plan
from qkan_orch.backends.qiskit_common import fake_backend_classes
from qkan_orch.circuits import FeedForwardPlan

RATIO_EXECUTIONS_GOAL = 20.0
RATIO_RMSE_GOAL = 1.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="fake_sherbrooke")
    parser.add_argument("--width", type=int, nargs="+", default=[4, 8, 1])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shots", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-baseline", action="store_true", help="skip qkan's qiskit solver")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Runtime's local-mode notices

    model, _, _ = make_models(args.width, args.reps, args.seed)
    x = make_inputs(args.batch, args.width[0], args.seed)
    plan = FeedForwardPlan(model, x.double().numpy())
    reference = run_plan(plan, get_backend("exact")).outputs
    backend = get_backend(f"ibm:{args.device}")
    rows: list[dict[str, Any]] = []
    for pack in (1, "auto"):
        log(f"[packing] ours ibm:{args.device} pack={pack} ...")
        seconds, report = timed(lambda pack=pack: run_plan(
            plan, backend, shots=args.shots, pack=pack, options={"seed": args.seed}, poll_interval=0.05))
        widths = sorted({r.pack for r in report.rounds if r.pack})
        rows.append({"run": f"ours pack={pack}", "width": widths, "executions": report.executions,
                     "provider_jobs": report.provider_jobs, "rmse": rmse(report.outputs, reference),
                     "seconds": seconds})
    if not args.skip_baseline:
        rows.append(baseline(args, model, x))

    print(f"QKAN {args.width}, reps {args.reps}, batch {args.batch}, {args.shots} shots, {args.device}")
    print(f"{'run':24} {'W':>8} {'executions':>11} {'jobs':>5} {'RMSE':>8} {'seconds':>8}")
    for r in rows:
        print(f"{r['run']:24} {r['width']!s:>8} {r['executions']:>11} {r['provider_jobs']:>5} "
              f"{r['rmse']:>8.4f} {r['seconds']:>8.1f}")
    one, auto = rows[0], rows[1]
    fewer = one["executions"] / auto["executions"]
    worse = auto["rmse"] / one["rmse"]
    print(f"executions W=1 / auto: {fewer:.1f}× (goal ≥ {RATIO_EXECUTIONS_GOAL:g}) "
          f"{'met' if fewer >= RATIO_EXECUTIONS_GOAL else 'NOT met'}")
    verdict = "met" if worse <= RATIO_RMSE_GOAL else "NOT met"
    print(f"RMSE auto / W=1: {worse:.2f} (goal ≤ {RATIO_RMSE_GOAL:g}) {verdict}")
    print(json.dumps({"args": vars(args), "runs": rows, "executions_ratio": fewer, "rmse_ratio": worse}))


def baseline(args: argparse.Namespace, model: Any, x: torch.Tensor) -> dict[str, Any]:
    """qkan's qiskit solver on the same fake device: its circuits and primitive jobs, counted."""
    events: Counter[str] = Counter()
    pubs = 0

    def on_job(record: dict[str, Any]) -> None:
        nonlocal pubs
        events[record.get("event", "?")] += 1
        if record.get("event") == "submitted":
            pubs += int(record.get("pub_count") or record.get("logical_circuit_count") or 0)

    solver = qkan_model(model, args.width, args.reps, fast_measure=False, solver="qiskit", solver_kwargs={
        "backend": fake_backend_classes()[args.device](), "shots": args.shots, "job_event_callback": on_job})
    log(f"[packing] qkan qiskit solver on {args.device} ...")
    with torch.no_grad():
        seconds, y = timed(lambda: solver(x))
    exact_z = qkan_model(model, args.width, args.reps, fast_measure=False)
    with torch.no_grad():
        ref = exact_z(x).double().numpy()
    circuits = args.batch * sum(a * b for a, b in zip(args.width[:-1], args.width[1:], strict=True))
    return {"run": "qkan qiskit solver", "width": [1], "executions": pubs or circuits,
            "provider_jobs": events["submitted"], "rmse": rmse(y.double().numpy(), ref), "seconds": seconds}


if __name__ == "__main__":
    sys.exit(main())
