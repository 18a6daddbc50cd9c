"""Executors of ActivationBatches: one interface, looked up by name."""

from qkan_orch.backends.base import Backend, Capabilities, Handle, Status
from qkan_orch.backends.registry import get_backend, list_backends
from qkan_orch.backends.runner import RunReport, run_plan

__all__ = ["Backend", "Capabilities", "Handle", "RunReport", "Status", "get_backend", "list_backends", "run_plan"]
