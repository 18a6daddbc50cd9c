"""Error mitigation around any shot backend: read-out correction and zero-noise extrapolation (DESIGN §6)."""

from qkan_orch.mitigation.backend import MitigatedBackend, mitigated
from qkan_orch.mitigation.setting import Mitigation

__all__ = ["MitigatedBackend", "Mitigation", "mitigated"]
