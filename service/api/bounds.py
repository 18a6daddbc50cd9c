"""What a request may ask for: each quantity it controls against its setting, before anything is allocated.

A spec is checked before its model is built or its file loaded; rows, executions,
shots and memory before the inputs are stored or a message is queued. Each
refusal is an ``InputError`` (422) naming the field, the amount and the limit, so a
client can tell what to shrink without asking the operator.
"""

from pydantic import ByteSize

from qkan_orch.backends.base import Estimate, round_bytes
from qkan_orch.models.errors import InputError
from qkan_orch.models.spec import ModelSpec, SequenceSpec, SpecLimits
from qkan_orch.service.settings import Settings


def spec_limits(settings: Settings) -> SpecLimits:
    return SpecLimits(layers=settings.max_layers, width=settings.max_layer_width, reps=settings.max_reps,
                      numbers=settings.max_model_numbers, window=settings.max_window)


def check_samples(settings: Settings, samples: int, field: str) -> None:
    if samples > settings.max_samples:
        raise InputError(field, f"has {samples:,} samples; this service's limit is {settings.max_samples:,}")


def round_rows(spec: ModelSpec, samples: int) -> list[int]:
    """Circuits of every round before deduplication (samples × edges of its layer, or of every gate of a sequence
    model's step: each LSTM layer's four gates while it runs, circuits.sequence_plan), known from the spec."""
    if isinstance(spec, SequenceSpec):
        gates = [4 * n_in * n_out for n_in, n_out in spec.quantum_layers[::4]]  # per LSTM layer
        return [samples * sum(gates[k] for k in range(spec.layers) if 0 <= r - k < spec.window)
                for r in range(spec.window + spec.layers - 1)]
    return [samples * n_in * n_out for n_in, n_out in spec.quantum_layers]


def check_rounds(settings: Settings, rows: list[int], samples: int) -> None:
    """Each round's circuits (``round_rows``) against the per-round limit, before a backend is loaded."""
    for number, count in enumerate(rows):
        if count > settings.max_rows_per_round:
            raise InputError("inputs", f"round {number} would run {count:,} circuits ({samples:,} samples × "
                                       f"{count // samples:,} edges); this service's limit is "
                                       f"{settings.max_rows_per_round:,} per round")


def check_estimate(settings: Settings, estimate: Estimate) -> None:
    """The estimate's executions, shots and worker memory."""
    if estimate.executions > settings.max_job_executions:
        raise InputError("inputs", f"the job would run up to {estimate.executions:,} circuit executions; "
                                   f"this service's limit is {settings.max_job_executions:,}")
    if estimate.shots > settings.max_job_shots:
        raise InputError("shots", f"the job would use up to {estimate.shots:,} shots; "
                                  f"this service's limit is {settings.max_job_shots:,}")
    _check_memory(settings, estimate.peak_bytes, "inputs", "its largest round")


# A training step of torch's LSTM keeps 57–91 bytes per (window, time step, hidden unit, layer) for autograd
# (measured with Adam and LBFGS, float32): the classical part of a sequence model's step, whatever its gates are.
SEQUENCE_STEP_BYTES = 96


def check_training(settings: Settings, spec: ModelSpec, samples: int, steps: int, field: str) -> None:
    """Samples (``field``: where they come from; a sequence model's windows), steps, the circuits of one step and
    the memory they take; for a sequence model also the windows' values and its recurrent state, which bound the
    window length even for a classical LSTM (no circuits)."""
    check_samples(settings, samples, field)
    if steps > settings.max_train_steps:
        raise InputError("steps", f"{steps:,} exceeds this service's limit of {settings.max_train_steps:,}")
    edges = sum(n_in * n_out for n_in, n_out in spec.quantum_layers)
    sequence = isinstance(spec, SequenceSpec)
    if sequence:  # every gate runs once per time step (sum(round_rows) without the list)
        rows = samples * spec.window * edges
        count = f"{samples:,} windows × {spec.window:,} steps × {edges:,} gate edges"
    else:
        rows, count = samples * edges, f"{samples:,} samples × {edges:,} edges"
    if rows > settings.max_rows_per_round:
        raise InputError(field, f"a training step would evaluate {rows:,} circuits ({count}); this service's limit "
                                f"is {settings.max_rows_per_round:,}")
    state = 0
    if sequence:  # what an upload of the same windows could not exceed, and the recurrent state a step keeps
        values = samples * spec.window * spec.in_dim
        if 8 * values > settings.max_payload_bytes:
            raise InputError(field, f"{samples:,} windows of {spec.window:,} × {spec.in_dim} values hold about "
                                    f"{_human(8 * values)}; this service takes at most "
                                    f"{_human(settings.max_payload_bytes)} of data per job")
        state = SEQUENCE_STEP_BYTES * samples * spec.window * spec.hidden * spec.layers
    _check_memory(settings, round_bytes(rows, spec.columns) + state, field, "a training step")


def _check_memory(settings: Settings, need: int, field: str, what: str) -> None:
    if need > settings.max_job_memory:
        raise InputError(field, f"{what} needs about {_human(need)} of worker memory; "
                                f"this service's limit is {_human(settings.max_job_memory)}")


def _human(size: int) -> str:
    return ByteSize(size).human_readable()
