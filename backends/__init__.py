"""Executors of ActivationBatches: one interface, looked up by name."""

from backends.base import Backend, Capabilities, Handle, Status
from backends.registry import get_backend, list_backends
from backends.runner import RunReport, run_plan

__all__ = ["Backend", "Capabilities", "Handle", "RunReport", "Status", "get_backend", "list_backends", "run_plan"]
