"""The compiler: QKAN layers × inputs → batched, parameterised single-qubit jobs."""

from qkan_orch.circuits.batch import ActivationBatch, BatchResult, Segment, Template
from qkan_orch.circuits.compile import compile_layer
from qkan_orch.circuits.plan import ExecutionPlan, FeedForwardPlan, PlanState, validate_inputs
from qkan_orch.circuits.plans import plan_for
from qkan_orch.circuits.readout import activation_stderr, activation_values
from qkan_orch.circuits.sequence_plan import SequencePlan

__all__ = [
    "ActivationBatch", "BatchResult", "ExecutionPlan", "FeedForwardPlan", "PlanState",
    "Segment", "SequencePlan", "Template", "activation_stderr", "activation_values", "compile_layer",
    "plan_for", "validate_inputs",
]
