"""Executors of ActivationBatches: one interface, looked up by name.

The names below load on first use (PEP 562), so a light submodule such as
``qkan_orch.backends.names`` imports no torch or SDK (the CLI's cached listing relies on it).
"""

import importlib
from typing import TYPE_CHECKING, Any

_SOURCES = {
    "Backend": "base", "Capabilities": "base", "Handle": "base", "Status": "base",
    "get_backend": "registry", "list_backends": "registry", "RunReport": "runner", "run_plan": "runner",
}

__all__ = ["Backend", "Capabilities", "Handle", "RunReport", "Status", "get_backend", "list_backends", "run_plan"]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SOURCES[name]}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from qkan_orch.backends.base import Backend, Capabilities, Handle, Status
    from qkan_orch.backends.registry import get_backend, list_backends
    from qkan_orch.backends.runner import RunReport, run_plan
