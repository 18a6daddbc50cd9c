"""Hardware against a reference: how far a backend's outputs are from the reference's, and whether the
errors each reports explain the difference."""

from qkan_orch.comparisons.agreement import Agreement, agreement, edge_rmse, independent_samples

__all__ = ["Agreement", "agreement", "edge_rmse", "independent_samples"]
