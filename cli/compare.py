"""``qkan-orch compare``: a comparison on the service, waited for, written to a folder with its figures."""

import argparse
import json
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from qkan_orch.cli.arrays import MITIGATION_HELP, pack_arg, parse_mitigation, parse_options, read_array
from qkan_orch.models.errors import InputError

if TYPE_CHECKING:
    from qkan_orch.client import Client, Comparison


def compare(args: argparse.Namespace) -> int:
    import numpy as np

    from qkan_orch.client import Client, JobState
    from qkan_orch.comparisons import edge_rmse
    from qkan_orch.comparisons.plots import plot_edge_errors, plot_outputs, plot_residuals

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    options = _backend_options(args.options)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError("out", f"{out} exists and is not a folder")
    inputs = read_array(args.inputs)
    with Client(args.url, args.api_key) as qc:
        created = qc.compare(args.model, inputs, backends, args.reference, args.shots, args.pack, options,
                             parse_mitigation(args.mitigation))
        print(created.id)
        done = follow(qc, created.id, args.quiet)
        succeeded = [c for c in [done.reference, *done.backends] if c.job.state == JobState.SUCCEEDED]
        results = {c.backend: qc.job_result(c.job.id, activations=True) for c in succeeded}
    ref = results.pop(args.reference, None)
    # per backend and layer, each edge's activation RMSE vs the reference (out × in), where both kept activations
    edges = {name: [edge_rmse(a, r) for a, r in zip(res.activations, ref.activations, strict=True)]
             for name, res in results.items() if ref is not None and ref.activations and res.activations}
    arrays = {name: {"outputs": r.outputs, "stderr": r.stderr, "raw_outputs": r.raw_outputs,
                     "raw_stderr": r.raw_stderr, "edge_rmse": [e.tolist() for e in edges.get(name, [])]}
              for name, r in results.items()}
    report = {"comparison": asdict(done), "reference": {"outputs": ref.outputs, "stderr": ref.stderr} if ref else None,
              "backends": arrays}
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused or failed comparison writes nothing
    (out / "report.json").write_text(json.dumps(report, indent=1, default=datetime.isoformat))
    if ref is not None and results:
        reference = (np.asarray(ref.outputs), np.asarray(ref.stderr))
        outputs = {name: (np.asarray(r.outputs), np.asarray(r.stderr)) for name, r in results.items()}
        plot_outputs(reference, outputs, str(out / "outputs.png"), args.reference)
        plot_residuals(reference, outputs, str(out / "residuals.png"))
    if edges:
        plot_edge_errors(edges, str(out / "activations.png"))
    _print_table(done)
    everyone = [done.reference, *done.backends]
    return 0 if all(c.job.state == JobState.SUCCEEDED for c in everyone) else 1


def _backend_options(text: str | None) -> dict[str, dict]:
    options = parse_options(text)
    if not all(isinstance(v, dict) for v in options.values()):
        raise InputError("options", 'must map backends to their options, e.g. {"aer": {"seed": 1}}')
    return options


def follow(qc: "Client", comparison_id: str, quiet: bool) -> "Comparison":
    """The finished comparison; a line per change of its jobs' states on stderr unless ``quiet`` (the demo's
    progress too)."""
    last = ""
    while True:
        found = qc.comparison(comparison_id)
        states = ", ".join(f"{c.backend} {c.job.state}" for c in [found.reference, *found.backends])
        if states != last and not quiet:
            print(states, file=sys.stderr)
            last = states
        if found.finished:
            return found
        time.sleep(0.5)


def _print_table(done: "Comparison") -> None:
    print(f"{'backend':<28} {'state':<10} {'RMSE':>8} {'σ':>8} {'mean z²':>8} {'χ² p':>8} {'slope':>7} "
          f"{'raw slope':>9}")
    for c in done.backends:
        a, raw = c.agreement, c.raw_agreement
        cells = ([f"{a.rmse:8.4f}", f"{a.sigma:8.4f}", _num(a.mean_z2, 8, 3), f"{a.p_value:8.2g}", _num(a.slope, 7, 3)]
                 if a else ["—".rjust(8)] * 4 + ["—".rjust(7)])
        print(f"{c.backend:<28} {c.job.state:<10} {' '.join(cells)} {_num(raw.slope if raw else None, 9, 3)}")


def _num(value: float | None, width: int, digits: int) -> str:
    return "—".rjust(width) if value is None else f"{value:{width}.{digits}f}"


def add_compare(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compare", help="run backends and a reference on the same inputs on the service; write "
                                       "DIR/report.json and figures")
    c.add_argument("--model", required=True, help="model id on the service")
    c.add_argument("--inputs", required=True, help=".npy or .csv, one sample per row")
    c.add_argument("--backends", required=True, help="comma-separated, e.g. aer,aer:fake_melbourne")
    c.add_argument("--reference", default="exact")
    c.add_argument("--shots", type=int)
    c.add_argument("--pack", type=pack_arg, help="template copies per circuit, or auto (from calibration)")
    c.add_argument("--options", help='options per backend as JSON, e.g. {"aer": {"seed": 1}}')
    c.add_argument("--mitigation", help=MITIGATION_HELP)
    c.add_argument("--out", required=True, help="folder for report.json, outputs.png, residuals.png, activations.png")
    c.add_argument("--quiet", action="store_true")
    c.add_argument("--url", help="API base URL (default $QKAN_URL or http://127.0.0.1:8000)")
    c.add_argument("--api-key", help="default $QKAN_API_KEY")
    c.set_defaults(handler=compare)
