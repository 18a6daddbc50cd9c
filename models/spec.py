"""Model specs: the JSON that, with a weights file, fully describes a model.

A QKAN spec uses the keyword names of ``qkan.QKAN(...)``, so the kwargs JSON
of a model trained with the ``qkan`` package *is* a spec. Options that only
steer how ``qkan`` computes (solver choice, dtypes, initialisation) are
accepted and ignored with one ``IgnoredOptionsWarning`` naming them; options
that change the function and that we cannot run on a single-qubit template are
refused by name.
"""

import json
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from qkan_orch.models.ansatz import build_ansatz, canonical_ansatz
from qkan_orch.models.errors import InputError

BASE_ACTIVATIONS = ("silu", "swish", "gelu", "gelu_exact", "gelu_tanh", "relu", "tanh", "sigmoid")
KNOWN_SOLVERS = ("exact", "qml", "flash", "cutn", "tn", "cute", "cutile", "qiskit", "cudaq")

# qkan keywords that do not change the function a trained model computes.
_IGNORED_QKAN_KEYS = {
    "device", "qml_device", "c_dtype", "p_dtype", "save_act", "preact_init",
    "theta_init", "checkpoint_reps", "solver_kwargs", "seed", "p_dim",
}


class IgnoredOptionsWarning(UserWarning):
    """A qkan spec carried keywords we accept but do not use: said once, so nobody believes they took effect."""


@dataclass(frozen=True)
class QKANSpec:
    """A multi-layer QKAN; field names and defaults follow ``qkan.QKAN``."""

    width: tuple[int, ...]
    reps: int = 3
    ansatz: str = "pz_encoding"
    preact_trainable: bool = False
    postact_weight_trainable: bool = False
    postact_bias_trainable: bool = False
    ba_trainable: bool = False
    base_activation: str = "silu"
    fast_measure: bool = True
    is_map: bool = False
    hidden: int = 0
    norm_out: int = 0
    kind: str = field(default="qkan", init=False)

    @property
    def in_dim(self) -> int:
        return self.width[0]

    @property
    def out_dim(self) -> int:
        return self.width[-1]

    @property
    def quantum_layers(self) -> tuple[tuple[int, int], ...]:
        """(inputs, outputs) of each QKAN layer in order, one quantum round each; is_map's tail is classical."""
        width = self.width
        return tuple((width[k], width[k + 1]) for k in range(len(width) - (2 if self.is_map else 1)))

    @property
    def columns(self) -> int:
        """Parameters of one edge circuit (P): the width of a compiled row."""
        return circuit_columns(self.ansatz, self.reps)

    @property
    def state_size(self) -> int:
        """Numbers the model's state_dict holds: what building or loading it costs, known before either."""
        per_edge = self.columns + self.reps + 4  # θ and encodings' pre-activations (P + reps), 4 per-edge weights
        size = per_edge * sum(n_in * n_out for n_in, n_out in self.quantum_layers)
        if self.is_map:  # Linear(width[-2] → hidden) · SiLU · Linear(hidden → width[-1])
            size += (self.width[-2] + 1) * self.hidden + (self.hidden + 1) * self.width[-1]
        return size

    def with_reps(self, reps: int) -> "QKANSpec":
        return replace(self, reps=reps)


@dataclass(frozen=True)
class HQKANSpec:
    """HQKAN: Linear(in_dim → width[0]) · QKAN(width) · Linear(width[-1] → out_dim)."""

    in_dim: int
    out_dim: int
    qkan: QKANSpec
    kind: str = field(default="hqkan", init=False)

    @property
    def quantum_layers(self) -> tuple[tuple[int, int], ...]:
        return self.qkan.quantum_layers

    @property
    def columns(self) -> int:
        return self.qkan.columns

    @property
    def state_size(self) -> int:
        """The QKAN's numbers and the two Linear maps around it."""
        return self.qkan.state_size + (self.in_dim + 1) * self.qkan.in_dim + (self.qkan.out_dim + 1) * self.out_dim

    def with_reps(self, reps: int) -> "HQKANSpec":
        return replace(self, qkan=self.qkan.with_reps(reps))


SEQUENCE_KINDS = ("qkan-lstm", "hqkan-lstm", "lstm")
HEADS = ("last", "sequence")


@dataclass(frozen=True)
class SequenceSpec:
    """An LSTM over windows of ``window`` steps of ``in_dim`` features (docs/SEQUENCE_MODELS.md).

    Each of a cell's four gate maps [x_t, h_{t−1}] → gate pre-activation is one QKAN layer (``qkan-lstm``),
    Linear → one latent QKAN layer of width ``latent`` → Linear (``hqkan-lstm``), or torch's own LSTM
    (``lstm``, the classical baseline). ``gate`` holds the options of every gate's QKAN layer; its width is
    the cell's. ``head``: ``last`` maps h_T to ``out_dim`` outputs, ``sequence`` maps every h_t (T·out_dim).
    """

    kind: str
    in_dim: int
    hidden: int
    window: int
    out_dim: int = 1
    layers: int = 1
    head: str = "last"
    latent: int = 0
    gate: QKANSpec = QKANSpec(width=(1, 1))

    def cell_inputs(self, layer: int) -> int:
        """Width of [x_t, h_{t−1}] entering layer ``layer``'s gates (x_t: the layer below's h_t above 0)."""
        return (self.in_dim if layer == 0 else self.hidden) + self.hidden

    def gate_width(self, layer: int) -> tuple[int, int]:
        """(inputs, outputs) of layer ``layer``'s gate QKANs."""
        return (self.latent, self.latent) if self.kind == "hqkan-lstm" else (self.cell_inputs(layer), self.hidden)

    def gate_spec(self, layer: int) -> QKANSpec:
        return replace(self.gate, width=self.gate_width(layer))

    @property
    def quantum_layers(self) -> tuple[tuple[int, int], ...]:
        """Every gate's QKAN layer, four per LSTM layer; a time step runs all of them in one round."""
        return () if self.kind == "lstm" else tuple(self.gate_width(k) for k in range(self.layers) for _ in range(4))

    @property
    def total_out(self) -> int:
        return self.out_dim * (self.window if self.head == "sequence" else 1)

    @property
    def columns(self) -> int:
        return self.gate.columns

    @property
    def state_size(self) -> int:
        """The gates' QKAN layers (or torch LSTM's weights), the HQKAN Linear maps and the head."""
        head = (self.hidden + 1) * self.out_dim
        if self.kind == "lstm":  # torch's weight_ih, weight_hh and two biases per layer
            return head + sum(4 * self.hidden * (self.cell_inputs(k) + 2) for k in range(self.layers))
        per_edge = self.columns + self.gate.reps + 4
        size = head + per_edge * sum(n_in * n_out for n_in, n_out in self.quantum_layers)
        if self.kind == "hqkan-lstm":  # each gate's Linear maps into and out of its latent QKAN
            size += sum(4 * ((self.cell_inputs(k) + 1) * self.latent + (self.latent + 1) * self.hidden)
                        for k in range(self.layers))
        return size

    def with_reps(self, reps: int) -> "SequenceSpec":
        return replace(self, gate=self.gate.with_reps(reps))


ModelSpec = QKANSpec | HQKANSpec | SequenceSpec


def circuit_columns(ansatz: str, reps: int) -> int:
    """P of ``ansatz`` at any ``reps`` without building its gate list: each re-upload adds the same gates."""
    one, two = build_ansatz(ansatz, 1).num_params, build_ansatz(ansatz, 2).num_params
    return one + (reps - 1) * (two - one)


@dataclass(frozen=True)
class SpecLimits:
    """The largest model a caller takes: checked on a parsed spec, before any tensor of it exists."""

    layers: int
    width: int
    reps: int
    numbers: int
    window: int  # time steps of a sequence model: a round each, so quotes and plans are as long

    def check(self, spec: ModelSpec, where: str = "spec") -> None:
        """Refuse, naming the option and the limit, a spec over any bound (reps first: sizes depend on it)."""
        if isinstance(spec, SequenceSpec):
            reps, layers, kind = (spec.gate.reps, f"{where}.gate.reps"), (spec.layers, f"{where}.layers"), "LSTM"
            widths = {f"{where}.{name}": getattr(spec, name) for name in ("in_dim", "hidden", "latent", "out_dim")}
        else:
            inner = spec.qkan if isinstance(spec, HQKANSpec) else spec
            inner_where = f"{where}.qkan" if isinstance(spec, HQKANSpec) else where
            reps, kind = (inner.reps, f"{inner_where}.reps"), "QKAN"
            layers = (len(spec.quantum_layers), f"{inner_where}.width")
            widths = {f"{inner_where}.width": max(inner.width), f"{inner_where}.hidden": inner.hidden}
            if isinstance(spec, HQKANSpec):
                widths |= {f"{where}.in_dim": spec.in_dim, f"{where}.out_dim": spec.out_dim}
        if reps[0] > self.reps:
            raise InputError(reps[1], f"{reps[0]} exceeds this service's limit of {self.reps}")
        if layers[0] > self.layers:
            raise InputError(layers[1], f"has {layers[0]} {kind} layers; this service's limit is {self.layers}")
        if isinstance(spec, SequenceSpec) and spec.window > self.window:
            raise InputError(f"{where}.window", f"{spec.window:,} time steps exceed this service's limit of "
                                                f"{self.window:,} (one round each)")
        for name, width in widths.items():
            if width > self.width:
                raise InputError(name, f"a layer of {width} units exceeds this service's limit of {self.width}")
        if spec.state_size > self.numbers:
            raise InputError(where, f"the model holds {spec.state_size:,} numbers; "
                                    f"this service's limit is {self.numbers:,}")


def spec_to_json(spec: ModelSpec) -> str:
    """The canonical JSON of ``spec`` (``parse_spec`` reads it back equal); a sequence model's gate options
    carry no width, which its cells set."""
    obj = asdict(spec)
    if isinstance(spec, SequenceSpec):
        obj["gate"] = {k: v for k, v in obj["gate"].items() if k not in ("width", "kind")}
    return json.dumps(obj, sort_keys=True)


def parse_spec(obj: Any, field_name: str = "spec") -> ModelSpec:
    """Validate a decoded JSON object (ours or qkan's kwargs) into a spec."""
    if not isinstance(obj, dict):
        raise InputError(field_name, "must be a JSON object")
    obj = dict(obj)
    kind = obj.pop("kind", "qkan")
    if kind == "qkan":
        return _parse_qkan(obj, field_name)
    if kind == "hqkan":
        unknown = set(obj) - {"in_dim", "out_dim", "qkan"}
        if unknown:
            raise InputError(f"{field_name}.{sorted(unknown)[0]}", "unknown HQKAN option")
        in_dim = _positive_int(obj.get("in_dim"), f"{field_name}.in_dim")
        out_dim = _positive_int(obj.get("out_dim", in_dim), f"{field_name}.out_dim")
        inner = obj.get("qkan")
        if not isinstance(inner, dict) or inner.get("kind", "qkan") != "qkan":
            raise InputError(f"{field_name}.qkan", "must be a QKAN spec object")
        inner = {k: v for k, v in inner.items() if k != "kind"}
        return HQKANSpec(in_dim, out_dim, _parse_qkan(inner, f"{field_name}.qkan"))
    if kind in SEQUENCE_KINDS:
        return _parse_sequence(kind, obj, field_name)
    raise InputError(f"{field_name}.kind", f"'{kind}' is not a model kind (qkan, hqkan, {', '.join(SEQUENCE_KINDS)})")


def load_spec_file(path: str) -> ModelSpec:
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except FileNotFoundError:
        raise InputError("spec", f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError("spec", f"{path} is not valid JSON ({exc})") from None
    return parse_spec(obj)


def _parse_qkan(obj: dict[str, Any], where: str) -> QKANSpec:
    _refuse_unsupported(obj, where)
    known = set(QKANSpec.__dataclass_fields__) - {"kind"}
    unknown = set(obj) - known - _IGNORED_QKAN_KEYS - {"group", "is_batchnorm", "theta_size", "solver"}
    if unknown:
        raise InputError(f"{where}.{sorted(unknown)[0]}", "unknown QKAN option")
    ignored = sorted(set(obj) - known)
    if ignored:
        warnings.warn(f"{where}: ignoring qkan options {', '.join(ignored)} (they do not change the forward pass)",
                      IgnoredOptionsWarning, stacklevel=3)
    width = obj.get("width")
    if (
        not isinstance(width, list | tuple)
        or len(width) < 2
        or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in width)
    ):
        raise InputError(f"{where}.width", "must be a list of ≥ 2 positive integers")
    kwargs: dict[str, Any] = {"width": tuple(width)}
    kwargs["reps"] = _positive_int(obj.get("reps", 3), f"{where}.reps")
    kwargs["ansatz"] = _ansatz(obj.get("ansatz", "pz_encoding"), where)
    for flag in (
        "preact_trainable", "postact_weight_trainable", "postact_bias_trainable",
        "ba_trainable", "fast_measure", "is_map",
    ):
        if flag in obj:
            if not isinstance(obj[flag], bool):
                raise InputError(f"{where}.{flag}", "must be true or false")
            kwargs[flag] = obj[flag]
    activation = obj.get("base_activation", "silu")
    if not isinstance(activation, str) or activation.lower() not in BASE_ACTIVATIONS:
        raise InputError(
            f"{where}.base_activation",
            f"{activation!r} is not supported (supported: {', '.join(BASE_ACTIVATIONS)})",
        )
    kwargs["base_activation"] = activation.lower()
    kwargs["hidden"] = _nonnegative_int(obj.get("hidden", 0), f"{where}.hidden")
    kwargs["norm_out"] = _nonnegative_int(obj.get("norm_out", 0), f"{where}.norm_out")
    if kwargs.get("is_map") and kwargs["hidden"] < 1:
        raise InputError(f"{where}.hidden", "must be ≥ 1 when is_map is true")
    return QKANSpec(**kwargs)


def _parse_sequence(kind: str, obj: dict[str, Any], where: str) -> SequenceSpec:
    unknown = set(obj) - {"in_dim", "hidden", "window", "out_dim", "layers", "head", "latent", "gate"}
    if unknown:
        raise InputError(f"{where}.{sorted(unknown)[0]}", f"unknown {kind} option")
    in_dim = _positive_int(obj.get("in_dim", 1), f"{where}.in_dim")
    hidden = _positive_int(obj.get("hidden"), f"{where}.hidden")
    head = obj.get("head", "last")
    if head not in HEADS:
        raise InputError(f"{where}.head", f"{head!r} is not a head ({', '.join(HEADS)})")
    latent = _nonnegative_int(obj.get("latent", 0), f"{where}.latent")
    if kind == "hqkan-lstm" and latent < 1:
        raise InputError(f"{where}.latent", "the latent QKAN's width must be ≥ 1 for hqkan-lstm")
    gate = obj.get("gate", {})
    if not isinstance(gate, dict) or gate.get("kind", "qkan") != "qkan" or "width" in gate:
        raise InputError(f"{where}.gate", "must be an object of QKAN options without width (the cell sets it)")
    gate = {k: v for k, v in gate.items() if k != "kind"}
    return SequenceSpec(kind=kind, in_dim=in_dim, hidden=hidden, window=_positive_int(obj.get("window"),
                        f"{where}.window"), out_dim=_positive_int(obj.get("out_dim", 1), f"{where}.out_dim"),
                        layers=_positive_int(obj.get("layers", 1), f"{where}.layers"), head=head,
                        latent=latent if kind == "hqkan-lstm" else 0,
                        gate=_parse_qkan({**gate, "width": [1, 1]}, f"{where}.gate"))


def _refuse_unsupported(obj: dict[str, Any], where: str) -> None:
    if obj.get("group", -1) != -1:
        raise InputError(f"{where}.group", "grouped θ (group != -1) is not supported: every edge needs its own circuit")
    if obj.get("is_batchnorm", False):
        raise InputError(f"{where}.is_batchnorm", "batch normalisation layers are not supported")
    if obj.get("theta_size") is not None:
        raise InputError(f"{where}.theta_size", "custom ansätze (theta_size) are not supported")
    solver = obj.get("solver", "exact")
    if not isinstance(solver, str) or solver not in KNOWN_SOLVERS:
        raise InputError(f"{where}.solver", f"custom solver {solver!r} is not supported")


def _ansatz(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}.ansatz", "must be a string")
    try:
        return canonical_ansatz(value)
    except InputError as exc:
        raise InputError(f"{where}.ansatz", exc.message) from None


def _positive_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(name, f"must be a positive integer, got {value!r}")
    return value


def _nonnegative_int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InputError(name, f"must be a non-negative integer, got {value!r}")
    return value
