"""Error mitigation on shot backends, and our zero-noise extrapolation against Mitiq's.

1. The demo model (``qkan-orch demo``: QKAN [2, 3, 1], reps 3, trained on sin_cos) on the 8×8 grid at
   20 000 shots per circuit on ``aer:fake_melbourne`` and ``braket:local_dm`` (default noise), run as
   ``run_plan(FeedForwardPlan, mitigated(backend, Mitigation.parse(method)), shots)`` for every method. Per
   run: RMSE against ``exact``; the slope of the least-squares line of outputs on exact outputs (noise
   shrinks outputs towards 0, slope < 1); mean z² = mean(((y − exact)/stderr)²), ≈ 1 when the stated
   errors are honest and ≫ 1 when bias dominates; total shots; seconds. Mitigated runs also show their raw
   outputs: what their rounds read at scale 1, unmitigated (the last layer's circuits were compiled from the
   mitigated first layer, so this is not a separate unmitigated run; that is ``none``). The last run, ``none``
   with the total shots of readout+zne (linear) spread over its own circuits, shows what the extra shots
   alone would buy.

2. One edge circuit (the first layer's row farthest from p0 = ½) through our ZNE and through Mitiq 1.1.0's
   ``execute_with_zne`` on the same executor: ``bench/edge_executor.py``, an exact one-qubit density matrix
   with depolarizing p after every gate and a read-out flip, sampled binomially — one numpy module both
   environments import. Ours runs the whole product path: ``EdgeBackend`` wraps the executor, and
   ``mitigated(EdgeBackend, zne)`` expands the row into folded templates, runs them and reduces (extrapolates,
   propagates errors). Mitiq folds a cirq circuit of the same gates with ``fold_all`` (every gate G →
   G(G†G)^k: our fold, gate for gate; ``fold_global`` would give the same probabilities here only because
   depolarizing commutes with unitaries) and its executor turns each operation back into its unitary. Same
   scale factors [1, 3, 5]; LinearFactory / RichardsonFactory / ExpFactory(asymptote=½) against linear /
   richardson / exponential. Checks: on exact probabilities (shots = 0) both estimates agree to 1e-9; at
   ``--shots`` per scale the two independent estimates differ by at most 3σ, σ² = se_ours² + se_mitiq²
   (se_mitiq: Mitiq's binomial points through our gradient; Mitiq's log fit is weighted by √|p0 − ½|, ours
   is not — identical on exact data, which is exactly exponential here; "same data" shows the gap on
   Mitiq's own points). Mitiq needs numpy < 2.3, so it runs in a venv of its own (created once under
   ``~/.cache/qkan-orch``), as ``bench/mitiq_reference.py`` exchanging JSON.

    nice -n 10 .venv/bin/python bench/mitigation.py          # about 12 minutes on 2 cores
    .venv/bin/python bench/mitigation.py --help
"""

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from compile_and_run import log, rmse, timed
from edge_executor import gate, probability, zeros

from qkan_orch.backends import get_backend, run_plan
from qkan_orch.backends.base import Backend, Capabilities
from qkan_orch.backends.exact import exact_p0
from qkan_orch.backends.sampling import LocalSamplingBackend
from qkan_orch.circuits import FeedForwardPlan, compile_layer
from qkan_orch.circuits.batch import ActivationBatch, Template
from qkan_orch.circuits.packing import binomial_p0
from qkan_orch.cli.demo import DEMO_FUNCTION, DEMO_SPEC, demo_model
from qkan_orch.mitigation import Mitigation, mitigated
from qkan_orch.mitigation.extrapolation import extrapolate
from qkan_orch.models.functions import get_function

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-mitiq.txt"
MITIQ_VENV = Path.home() / ".cache" / "qkan-orch" / "mitiq-venv"
RUNS: tuple[tuple[str, Any], ...] = (
    ("none", "none"), ("readout", "readout"), ("zne linear", "zne"), ("readout+zne linear", "readout+zne"),
    ("readout+zne exponential", {"method": "readout+zne", "extrapolation": "exponential"}),
    ("readout+zne richardson", {"method": "readout+zne", "extrapolation": "richardson"}),
)
EQUAL_SHOTS_OF = "readout+zne linear"
EXTRAPOLATIONS = ("linear", "richardson", "exponential")
SIGMAS = 3.0  # two-sided bound on ours − mitiq: fails a correct implementation with probability 0.27 %
EXACT_TOLERANCE = 1e-9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["aer:fake_melbourne", "braket:local_dm"])
    parser.add_argument("--grid", type=int, default=8, help="grid points per axis (default: 8)")
    parser.add_argument("--shots", type=int, default=20_000, help="shots per circuit (default: 20000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--edge-depolarizing", type=float, default=0.01, help="edge executor's p per gate")
    parser.add_argument("--edge-flip", type=float, default=0.02, help="edge executor's read-out flip")
    parser.add_argument("--mitiq-venv", type=Path, default=MITIQ_VENV)
    parser.add_argument("--skip-backends", action="store_true", help="only the comparison with Mitiq")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # provider notices

    model, _ = demo_model()
    function = get_function(DEMO_FUNCTION)
    inputs = function.grid(args.grid).numpy()
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_backends:
        plan = FeedForwardPlan(model, inputs)
        exact = run_plan(plan, get_backend("exact")).outputs
        for name in args.backends:
            rows = compare_methods(get_backend(name), plan, exact, args.shots, args.seed)
            print_methods(name, rows, args, exact)
            report[name] = rows
    report["mitiq"] = compare_with_mitiq(compile_layer(model.stages()[0], inputs), args)
    print(json.dumps(report))


def scores(y: np.ndarray, se: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    y, se, exact = (np.ravel(a) for a in (y, se, exact))
    return {"rmse": rmse(y, exact), "slope": float(np.polyfit(exact, y, 1)[0]),
            "z2": float(np.mean(np.square((y - exact) / se)))}


def run(backend: Backend, plan: FeedForwardPlan, exact: np.ndarray, label: str, setting: Any, shots: int,
        seed: int) -> dict[str, Any]:
    caps = backend.capabilities()
    options = {"seed": seed} if "seed" in caps.options else None
    log(f"[mitigation] {caps.name} {label} at {shots} shots ...")
    seconds, report = timed(lambda: run_plan(
        plan, mitigated(backend, Mitigation.parse(setting, caps)), shots=shots, options=options))
    return {"run": label, "shots": shots, "total_shots": sum(r.shots * r.executions for r in report.rounds),
            "executions": report.executions, "seconds": seconds, **scores(report.outputs, report.stderr, exact),
            "raw": None if report.raw is None else scores(*report.raw, exact)}


def compare_methods(backend: Backend, plan: FeedForwardPlan, exact: np.ndarray, shots: int, seed: int
                    ) -> list[dict[str, Any]]:
    rows = [run(backend, plan, exact, label, setting, shots, seed) for label, setting in RUNS]
    plain, costly = rows[0], next(r for r in rows if r["run"] == EQUAL_SHOTS_OF)
    equal = round(costly["total_shots"] / plain["executions"])
    rows.append(run(backend, plan, exact, f"none (shots of {EQUAL_SHOTS_OF})", "none", equal, seed))
    return rows


def print_methods(name: str, rows: list[dict[str, Any]], args: argparse.Namespace, exact: np.ndarray) -> None:
    print(f"\n{name}: QKAN {DEMO_SPEC['width']} reps {DEMO_SPEC['reps']}, {args.grid}×{args.grid} grid, "
          f"exact outputs in [{exact.min():.3f}, {exact.max():.3f}]")
    print(f"{'method':38} {'shots/circ':>10} {'total shots':>12} {'circuits':>8} {'RMSE':>7} {'slope':>6} "
          f"{'mean z²':>8} {'seconds':>7}")
    for r in rows:
        print(f"{r['run']:38} {r['shots']:>10} {r['total_shots']:>12} {r['executions']:>8} {r['rmse']:>7.4f} "
              f"{r['slope']:>6.3f} {r['z2']:>8.2f} {r['seconds']:>7.1f}")
        if r["raw"]:
            raw = r["raw"]
            print(f"{'  raw (scale 1, as read)':38} {'':>10} {'':>12} {'':>8} {raw['rmse']:>7.4f} "
                  f"{raw['slope']:>6.3f} {raw['z2']:>8.2f}")


class EdgeBackend(LocalSamplingBackend):
    """``edge_executor`` as a backend, so our ZNE runs its whole path: expand → folded templates → reduce."""

    name = "edge"

    def __init__(self, depolarizing: float, flip: float, seed: int) -> None:
        self.depolarizing, self.flip = depolarizing, flip
        self.rng = np.random.default_rng(seed)

    def capabilities(self) -> Capabilities:
        return Capabilities(self.name, kind="noisy simulator", qubits=1,
                            noise=f"depolarizing {self.depolarizing} per gate, read-out flip {self.flip}",
                            native_gates=("h", "x", "z", "rz", "ry"))

    def count_zeros(self, template: Template, packed: np.ndarray, width: int, shots: int,
                    options: dict[str, Any], metadata: dict[str, Any]) -> np.ndarray:
        return np.array([[zeros(unitaries(template, row), self.depolarizing, self.flip, shots, self.rng)]
                         for row in packed])


def unitaries(template: Template, row: np.ndarray) -> list[np.ndarray]:
    """The gates ``template`` emits (folded, G† of a rotation as its negated angle) with the angles of ``row``."""
    return [gate(s.name) if s.column is None else gate(s.name, s.sign * row[s.column]) for s in template.steps]


def compare_with_mitiq(layer: ActivationBatch, args: argparse.Namespace) -> dict[str, Any]:
    ideal = exact_p0(layer)
    index = int(np.argmax(np.abs(ideal - 0.5)))
    row, p, f = layer.params[index], args.edge_depolarizing, args.edge_flip
    scales = np.array([1, 3, 5], dtype=np.float64)
    steps = layer.template.steps
    job = {"gates": [[s.name, None if s.column is None else float(s.sign * row[s.column])] for s in steps],
           "depolarizing": p, "flip": f, "scale_factors": scales.tolist(), "extrapolations": EXTRAPOLATIONS,
           "seed": args.seed + 2}
    ours_gates = [len(Template(layer.template.ansatz, layer.template.reps, int(s)).steps) for s in scales]
    print(f"\nZNE of one edge circuit, ours against Mitiq: layer 0 row {index} ({layer.template.ansatz}, reps "
          f"{layer.template.reps}), ideal p0 {ideal[index]:.4f}; executor: depolarizing {p} per gate, read-out "
          f"flip {f}; scale factors {scales.astype(int).tolist()}, gates per scale {ours_gates} (ours); "
          f"{args.shots} shots per scale")
    print(f"noise-free limit with the read-out flip left in: ½ + (1 − 2f)(p0 − ½) = "
          f"{0.5 + (1 - 2 * f) * (ideal[index] - 0.5):.4f}")
    python = mitiq_python(args.mitiq_venv)
    mitiq_exact = mitiq_run(python, {**job, "shots": 0}) if python else None
    mitiq_sampled = mitiq_run(python, {**job, "shots": args.shots}) if python and mitiq_exact else None
    if mitiq_exact is None or mitiq_sampled is None:
        return {}
    print(f"Mitiq {mitiq_exact['versions']}; gates per scale (Mitiq, fold_all): {mitiq_exact['linear']['gates']}")
    print(f"{'extrapolation':13} {'exact: ours':>12} {'Mitiq':>8} {'|Δ|':>8}   {'sampled: ours ± se':>20} "
          f"{'Mitiq ± se':>16} {'Δ':>8} {f'{SIGMAS:g}σ bound':>8} {'same data Δ':>11} verdict")
    batch = ActivationBatch(layer.template, layer.params[index:index + 1], (), layer.readout)
    exact_values = np.array([[probability(unitaries(Template(layer.template.ansatz, layer.template.reps, int(s)),
                                                     row), p, f) for s in scales]])
    out: dict[str, Any] = {"row": index, "ideal_p0": float(ideal[index]), "versions": mitiq_exact["versions"]}
    backend = EdgeBackend(p, f, args.seed + 1)
    for method in EXTRAPOLATIONS:
        ours_exact = float(extrapolate(scales, exact_values, np.zeros_like(exact_values), method)[0][0])
        result = mitigated(backend, Mitigation.parse({"method": "zne", "extrapolation": method},
                                                     backend.capabilities())).submit(batch, shots=args.shots).result
        assert result is not None  # a local backend finishes inside submit
        ours, ours_se = float(result.p0[0]), float(result.p0_stderr[0])
        theirs = mitiq_sampled[method]
        values = np.array([theirs["values"]])
        point_se = binomial_p0(np.rint(values * args.shots), args.shots)[1]
        same_data, gradient = extrapolate(np.array(theirs["scales"]), values, point_se, method)
        theirs_se = float(np.sqrt(np.sum(np.square(gradient * point_se))))
        exact_gap = abs(ours_exact - mitiq_exact[method]["estimate"])
        gap, bound = ours - theirs["estimate"], SIGMAS * float(np.hypot(ours_se, theirs_se))
        ok = exact_gap < EXACT_TOLERANCE and abs(gap) <= bound
        print(f"{method:13} {ours_exact:>12.6f} {mitiq_exact[method]['estimate']:>8.6f} {exact_gap:>8.1e}   "
              f"{ours:>11.4f} ± {ours_se:.4f} {theirs['estimate']:>7.4f} ± {theirs_se:.4f} {gap:>+8.4f} "
              f"{bound:>8.4f} {same_data[0] - theirs['estimate']:>+11.1e} {'PASS' if ok else 'FAIL'}")
        out[method] = {"ours_exact": ours_exact, "mitiq_exact": mitiq_exact[method]["estimate"], "ours": ours,
                       "ours_se": ours_se, "mitiq": theirs["estimate"], "mitiq_se": theirs_se,
                       "raw_p0": float(result.raw_p0[0]) if result.raw_p0 is not None else None, "pass": ok}
    verdict = "PASS" if all(out[m]["pass"] for m in EXTRAPOLATIONS) else "FAIL"
    print(f"{verdict} (each: exact estimates within {EXACT_TOLERANCE:g}, sampled ones within {SIGMAS:g}σ)")
    return out


def mitiq_python(venv: Path) -> Path | None:
    """The venv's python with ``requirements-mitiq.txt`` installed, set up once (a marker keeps what was)."""
    python, marker, wanted = venv / "bin" / "python", venv / ".requirements", REQUIREMENTS.read_text()
    if marker.is_file() and marker.read_text() == wanted:
        return python
    log(f"[mitiq] setting up {venv} (once) ...")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       text=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True,
                       capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines()
        print(f"Mitiq comparison skipped: setting up {venv} failed ({detail[-1] if detail else exc})")
        return None
    marker.write_text(wanted)
    return python


def mitiq_run(python: Path, job: dict[str, Any]) -> dict[str, Any] | None:
    """``mitiq_reference.py``'s answer to ``job``, or None (said in one line) if it fails."""
    done = subprocess.run([str(python), str(HERE / "mitiq_reference.py")], input=json.dumps(job),
                          capture_output=True, text=True)
    if done.returncode:
        print(f"Mitiq comparison skipped: mitiq_reference.py failed ({done.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(done.stdout)


if __name__ == "__main__":
    sys.exit(main())
