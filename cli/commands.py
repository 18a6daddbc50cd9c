"""``qkan-orch train | predict | backends``: thin shells over models, circuits and backends."""

import argparse
import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from qkan_orch.cli.arrays import MITIGATION_HELP, pack_arg, parse_mitigation, parse_options, read_array, write_array
from qkan_orch.models.errors import InputError

if TYPE_CHECKING:  # torch, the backends and Qiskit load in the handlers: the service commands start without them

    import numpy as np
    import torch

    from qkan_orch.backends.base import Capabilities
    from qkan_orch.backends.emulator import EmulatedDevice
    from qkan_orch.backends.runner import RunReport
    from qkan_orch.models.spec import ModelSpec, SequenceSpec


def resolve_shots(caps: "Capabilities", shots: int | None) -> int | None:
    """``--shots`` checked even where the backend ignores it, then the backend's default."""
    if shots is not None and shots <= 0:
        raise InputError("shots", f"must be a positive integer, got {shots}")
    return caps.shots_for(shots)


@contextmanager
def spec_warnings() -> Iterator[None]:
    """qkan options a spec carries that we ignore, as one ``warning:`` line instead of Python's two-line form."""
    from qkan_orch.models.spec import IgnoredOptionsWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IgnoredOptionsWarning)
        yield
    for w in caught:
        if issubclass(w.category, IgnoredOptionsWarning):
            print(f"qkan-orch: warning: {w.message}", file=sys.stderr)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def predict(args: argparse.Namespace) -> int:
    from qkan_orch.backends import get_backend, run_plan
    from qkan_orch.circuits import plan_for
    from qkan_orch.comparisons import agreement, independent_samples
    from qkan_orch.mitigation import Mitigation, mitigated
    from qkan_orch.models import load_model

    if not args.out.lower().endswith((".npy", ".csv")):
        raise InputError("out", f"{args.out}: use a .npy or .csv file")
    with spec_warnings():
        model = load_model(args.model, args.spec)
    backend = get_backend(args.backend)
    shots = resolve_shots(backend.capabilities(), args.shots)
    options = parse_options(args.options)
    mitigation = Mitigation.parse(parse_mitigation(args.mitigation), backend.capabilities())
    backend.validate(shots, args.pack, options)
    for path, field in ((args.stderr_out, "stderr-out"), (args.raw_out, "raw-out")):
        if path and not path.lower().endswith((".npy", ".csv")):
            raise InputError(field, f"{path}: use a .npy or .csv file")
    reference = get_backend(args.compare) if args.compare else None
    inputs = read_array(args.inputs)
    plan = plan_for(model, inputs)
    report = run_plan(plan, mitigated(backend, mitigation), shots=shots, pack=args.pack,
                      options=options, progress=not args.quiet)
    write_array(args.out, report.outputs)
    if args.stderr_out:
        write_array(args.stderr_out, report.stderr, field="stderr-out")
    if args.raw_out:  # before mitigation; without mitigation that is the output itself
        write_array(args.raw_out, report.raw[0] if report.raw is not None else report.outputs, field="raw-out")
    print(
        f"{report.outputs.shape[0]} samples on {backend.name} (mitigation: {mitigation.method}): "
        f"{report.rows} circuits (of {report.requested} activations), {report.executions} executions, "
        f"{report.seconds:.2f} s{_packing(report)} → {args.out}",
        file=sys.stderr,
    )
    if reference is not None:
        ref = run_plan(plan, reference,  # a plan keeps no run's state: the same one serves the reference
                       shots=resolve_shots(reference.capabilities(), None), progress=not args.quiet)
        found = agreement(report.outputs, report.stderr, ref.outputs, ref.stderr,
                          independent_samples(plan.inputs, model.spec.kind))
        print(f"vs {reference.name}: {found.summary()}", file=sys.stderr)
    return 0


def _packing(report: "RunReport") -> str:
    """The copies per circuit (a range if rounds differ) and the physical qubits, where the backend says."""
    widths = sorted({r.pack for r in report.rounds if r.pack is not None})
    if not widths:
        return ""
    text = f", pack {widths[0]}" if len(widths) == 1 else f", pack {widths[0]}–{widths[-1]}"
    qubits = next((r.qubits for r in reversed(report.rounds) if r.qubits), None)
    return text + (f" on qubits {','.join(map(str, qubits))}" if qubits else "")


MODELS = ("qkan", "hqkan", "qkan-lstm", "hqkan-lstm", "lstm")
SEQUENCE_MODELS = MODELS[2:]
DEFAULT_WINDOW = 8  # the T = 8: one provider job per step, so windows stay short

Split = tuple["np.ndarray", "np.ndarray", "np.ndarray | None", "np.ndarray | None"]


def train(args: argparse.Namespace) -> int:
    import torch

    from qkan_orch.models import build_model, fit, save_model
    from qkan_orch.models.noise_aware import NoisyForward
    from qkan_orch.models.spec import SequenceSpec, load_spec_file

    if not args.out.endswith(".safetensors"):
        raise InputError("out", f"{args.out}: models are saved as .safetensors")
    with spec_warnings():
        spec = load_spec_file(args.spec) if args.spec else None
        if isinstance(spec, SequenceSpec) or (spec is None and args.model in SEQUENCE_MODELS):
            spec, (x, y, x_test, y_test) = _sequence_data(args, spec)
        else:
            spec, (x, y, x_test, y_test) = _table_data(args, spec)
    noise = _noise_device(args, spec)
    model = build_model(spec, seed=args.seed)
    fit(
        model, torch.from_numpy(x).float(), torch.from_numpy(y).float(),
        optimizer=args.optimizer, steps=args.steps, lr=args.lr, seed=args.seed, progress=not args.quiet, noise=noise,
    )
    save_model(model, args.out, noise=noise.setting if noise else None)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    forward = model if noise is None else NoisyForward(model, noise)
    test = "" if x_test is None else f", test MSE {_mse(forward, x_test, y_test):.3e} on {len(x_test)} held out"
    through = "" if noise is None else f" (through {noise.device}'s noise on qubits {list(noise.qubits)})"
    print(
        f"trained {spec.kind} on {len(x)} samples: train MSE {_mse(forward, x, y):.3e}{test}{through}; "
        f"{params} trainable parameters → {args.out}",
        file=sys.stderr,
    )
    return 0


def _noise_device(args: argparse.Namespace, spec: "ModelSpec") -> "EmulatedDevice | None":
    """``--noise``/``--qubits`` as the device training runs through, refused by flag before any training."""
    from qkan_orch.models.spec import SequenceSpec

    if args.noise is None:
        if args.qubits is not None:
            raise InputError("qubits", "places noise-aware training: give --noise too (e.g. fake_melbourne)")
        return None
    if isinstance(spec, SequenceSpec):
        raise InputError("noise", "noise-aware training takes qkan and hqkan models; sequence models train "
                                  "noise-free for now")
    from qkan_orch.backends.emulator import emulated_device

    return emulated_device(args.noise, args.qubits)


def _mse(model: "torch.nn.Module", x: "np.ndarray", y: "np.ndarray") -> float:
    import torch

    with torch.no_grad():
        return float(torch.mean((model(torch.from_numpy(x).float()).double() - torch.from_numpy(y)) ** 2))


def _table_data(args: argparse.Namespace, spec: "ModelSpec | None") -> tuple["ModelSpec", Split]:
    """qkan / hqkan on a CSV (inputs, then targets; no test set) or a built-in function (tested on fresh draws)."""
    import numpy as np

    from qkan_orch.models import parse_spec
    from qkan_orch.models.functions import get_function
    from qkan_orch.models.sequences import SERIES

    if args.data:
        raise InputError("data", f"holds sequence windows, for --model {'|'.join(SEQUENCE_MODELS)}; use --csv")
    if args.function in SERIES:
        raise InputError("function", f"'{args.function}' is a sequence: train it with --model "
                                     f"{'|'.join(SEQUENCE_MODELS)}")
    data = read_array(args.csv, field="csv") if args.csv else None
    function = None if args.csv else get_function(args.function)
    if spec is None:
        in_dim = function.in_dim if function else data.shape[1] - 1  # hqkan on a CSV: one target, last
        if args.model == "hqkan" and in_dim < 1:
            raise InputError("csv", f"has {data.shape[1]} column(s); hqkan needs ≥ 1 input and the target last")
        spec = parse_spec(_spec_from_flags(args) if args.model == "qkan"
                          else {"kind": "hqkan", "in_dim": in_dim, "out_dim": 1, "qkan": _spec_from_flags(args)})
    if data is not None:
        if data.shape[1] != spec.in_dim + spec.out_dim:
            raise InputError(
                "csv", f"has {data.shape[1]} columns, the model needs {spec.in_dim} inputs + {spec.out_dim} targets"
            )
        x, y, x_test, y_test = data[:, : spec.in_dim], data[:, spec.in_dim :], None, None
    else:
        if function.in_dim != spec.in_dim or spec.out_dim != 1:
            raise InputError(
                "width", f"'{function.name}' maps {function.in_dim} input(s) to 1 output; the spec has "
                f"{spec.in_dim} → {spec.out_dim}",
            )
        xt, xs = function.sample(args.samples, seed=args.seed), function.sample(args.samples, seed=args.seed + 1)
        x, y, x_test, y_test = xt.numpy(), function(xt).numpy(), xs.numpy(), function(xs).numpy()
    if x.shape[0] == 0 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InputError("csv", "training data must be non-empty and finite")
    return spec, (x, y, x_test, y_test)


def _sequence_data(args: argparse.Namespace, spec: "SequenceSpec | None") -> tuple["SequenceSpec", Split]:
    """Next-value windows of a built-in series or a ``--data`` file (one window per row, target last), split by
    time: the last windows are the test set."""
    from qkan_orch.models import parse_spec
    from qkan_orch.models.sequences import get_series, split_by_time, windows, windows_from_table

    if args.csv:
        raise InputError("csv", "is for qkan|hqkan; give sequence windows with --data (one per row, target last)")
    if args.data:
        x, y = windows_from_table(read_array(args.data, field="data"), "data")
        if args.window is not None and args.window != x.shape[1]:
            raise InputError("window", f"{args.data} holds windows of {x.shape[1]} steps, not {args.window}")
        window = x.shape[1]
    else:
        if args.samples < 2:
            raise InputError("samples", f"must be ≥ 2 (windows to train and test on), got {args.samples}")
        window = args.window or (spec.window if spec else DEFAULT_WINDOW)
        x, y = windows(get_series(args.function)(args.samples + window), window)
    if spec is None:
        spec = parse_spec({"kind": args.model, "in_dim": 1, "hidden": args.hidden, "window": window,
                           "layers": args.layers, "latent": args.latent, "gate": _gate_options(args)})
    elif (spec.window, spec.in_dim, spec.total_out) != (window, 1, 1):
        raise InputError("spec", f"takes windows of {spec.window} × {spec.in_dim} values to {spec.total_out} "
                                 f"output(s); the data are windows of {window} × 1 values to 1 target")
    return spec, split_by_time(x, y)


def _gate_options(args: argparse.Namespace) -> dict:
    """The QKAN options the shape flags set, for a whole QKAN or every gate of a QKAN-LSTM."""
    return {
        "reps": args.reps, "ansatz": args.ansatz,
        "preact_trainable": args.preact_trainable, "postact_weight_trainable": args.postact_trainable,
        "postact_bias_trainable": args.postact_trainable, "ba_trainable": args.ba_trainable,
        "fast_measure": not args.z_readout,
    }


def _spec_from_flags(args: argparse.Namespace) -> dict:
    try:
        width = [int(w) for w in args.width.split(",")]
    except ValueError:
        raise InputError("width", f"'{args.width}' is not a comma-separated list of integers") from None
    return {"width": width, **_gate_options(args)}


def backends(args: argparse.Namespace) -> int:
    from qkan_orch.cli.backend_listing import backend_rows

    rows = backend_rows(args.kind, args.provider, args.filter)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max([28, *(len(r["name"]) for r in rows)])
    print(f"{'name':<{width}} {'kind':<16} {'qubits':>6} {'pack':>4}  noise")
    for r in rows:
        configured = r["configured"]
        qubits = r["qubits"] or "?"
        noise = r["noise"] if configured else f"not configured: set {r['enable_with']}"
        print(f"{r['name']:<{width}} {r['kind']:<16} {qubits:>6} {r['default_pack']:>4}  {noise}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """predict's and train's flags need the backends and torch (defaults, choices): ``flags=`` adds them only when
    that command runs (see ``cli.main._Parser``)."""
    sub.add_parser("predict", help="run a trained model's inference on a backend", flags=_predict_flags)
    sub.add_parser("train", help="train a QKAN, HQKAN or (H)QKAN-LSTM on built-in or CSV data", flags=_train_flags)
    b = sub.add_parser("backends", help="list backends: name, kind, qubits, default packing, noise")
    b.add_argument("--json", action="store_true")
    b.add_argument("--kind", help="only this kind: analytic | simulator | noisy simulator | qpu")
    b.add_argument("--provider", help="only this provider: exact | aer | emulate | ibm | braket | pennylane")
    b.add_argument("--filter", help="only names containing this text (case-insensitive)")
    b.set_defaults(handler=backends)


def _predict_flags(p: argparse.ArgumentParser) -> None:
    from qkan_orch.backends.base import DEFAULT_SHOTS

    p.add_argument("--model", required=True, help="our .safetensors, or a qkan .pt state_dict")
    p.add_argument("--spec", help="spec JSON (required for a .pt: the kwargs of its QKAN(...))")
    p.add_argument("--inputs", required=True, help=".npy or .csv, one sample per row")
    p.add_argument("--backend", default="exact", help="see `qkan-orch backends` (default: exact)")
    p.add_argument("--shots", type=int, help=f"shots per circuit (default {DEFAULT_SHOTS} on sampling backends)")
    p.add_argument("--pack", type=pack_arg, help="template copies per circuit, or auto (from calibration)")
    p.add_argument("--options", help='backend options as JSON, e.g. \'{"seed": 1}\'')
    p.add_argument("--out", required=True, help="outputs, .npy or .csv")
    p.add_argument("--stderr-out", help="standard errors of the outputs, .npy or .csv")
    p.add_argument("--mitigation", help=MITIGATION_HELP)
    p.add_argument("--raw-out", help="outputs before mitigation, .npy or .csv")
    p.add_argument("--compare", metavar="BACKEND",
                   help="also run on BACKEND (e.g. exact) with its defaults; print RMSE, max error, σ, slope")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=predict)


def _positive(value: str) -> int:
    """A flag that counts something (steps of a window, hidden units, layers): refused by name if not ≥ 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return number


def _train_flags(t: argparse.ArgumentParser) -> None:
    from qkan_orch.models.functions import FUNCTIONS
    from qkan_orch.models.sequences import SERIES

    source = t.add_mutually_exclusive_group(required=True)
    source.add_argument("--function", choices=[*sorted(FUNCTIONS), *sorted(SERIES)],
                        metavar=f"{{{','.join(sorted(FUNCTIONS))}}}|{{{','.join(sorted(SERIES))}}}",
                        help="built-in target on [-1, 1]^d (qkan, hqkan) or built-in sequence (the LSTM models)")
    source.add_argument("--csv", help="CSV: input columns, then target columns (qkan; hqkan: one target, last)")
    source.add_argument("--data", help="CSV or .npy of sequence windows for the LSTM models: one per row, target last")
    t.add_argument("--model", choices=MODELS, default="qkan",
                   help="qkan, hqkan (Linear · QKAN(--width) · Linear), or a sequence model (default qkan)")
    t.add_argument("--spec", help="model spec JSON (overrides --model and the shape flags below)")
    t.add_argument("--width", default="2,3,1", help="layer widths (default 2,3,1)")
    t.add_argument("--window", type=_positive,
                   help=f"steps per window (default {DEFAULT_WINDOW}, or the --data file's)")
    t.add_argument("--hidden", type=_positive, default=4, help="LSTM hidden units (default 4)")
    t.add_argument("--layers", type=_positive, default=1, help="stacked LSTM layers (default 1)")
    t.add_argument("--latent", type=_positive, default=2, help="hqkan-lstm: each gate's latent QKAN width (default 2)")
    t.add_argument("--reps", type=int, default=3)
    t.add_argument("--ansatz", default="pz_encoding", help="pz_encoding | rpz_encoding | real")
    t.add_argument("--preact-trainable", action="store_true")
    t.add_argument("--postact-trainable", action="store_true", help="train post-activation weights and biases")
    t.add_argument("--ba-trainable", action="store_true", help="train base-activation (SiLU) weights")
    t.add_argument("--z-readout", action="store_true", help="read out ⟨Z⟩ instead of qkan's √p0−√p1")
    t.add_argument("--optimizer", default="lbfgs", choices=["adam", "lbfgs"])
    t.add_argument("--steps", type=int, default=30)
    t.add_argument("--lr", type=float)
    t.add_argument("--samples", type=int, default=256,
                   help="samples drawn for a built-in function, or windows cut from a built-in sequence")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--noise", metavar="DEVICE", help="noise-aware training (qkan, hqkan): through an IBM fake "
                   "device's emulated noise, e.g. fake_melbourne; the model records it")
    t.add_argument("--qubits", help="with --noise: auto (the qubits aer:DEVICE packs onto by default) or "
                   "comma-separated physical qubits, e.g. 0,1,2,3")
    t.add_argument("--out", required=True, help="where to save the model (.safetensors)")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(handler=train)
