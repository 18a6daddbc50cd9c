"""The compiler: QKAN layers × inputs → batched, parameterised single-qubit jobs."""

from circuits.batch import ActivationBatch, BatchResult, Segment, Template
from circuits.compile import compile_layer
from circuits.plan import ExecutionPlan, FeedForwardPlan, PlanState, validate_inputs
from circuits.readout import activation_stderr, activation_values

__all__ = [
    "ActivationBatch", "BatchResult", "ExecutionPlan", "FeedForwardPlan", "PlanState",
    "Segment", "Template", "activation_stderr", "activation_values", "compile_layer",
    "validate_inputs",
]
