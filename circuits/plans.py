"""Which execution plan runs a model: feed-forward QKAN/HQKAN layer by layer, sequence models step by step."""

import numpy as np
import torch

from qkan_orch.circuits.plan import ExecutionPlan, FeedForwardPlan
from qkan_orch.circuits.sequence_plan import SequencePlan
from qkan_orch.models.network import Model
from qkan_orch.models.sequence import SequenceModel


def plan_for(model: Model, inputs: np.ndarray | torch.Tensor) -> ExecutionPlan:
    if isinstance(model, SequenceModel):
        return SequencePlan(model, inputs)
    return FeedForwardPlan(model, inputs)
