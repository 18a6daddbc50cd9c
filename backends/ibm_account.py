"""The IBM Quantum account's Qiskit Runtime service: ``ibm:<backend>`` devices and their jobs go through it.

Built once per process from QKAN_IBM_TOKEN / QKAN_IBM_INSTANCE, or from an
account saved with ``QiskitRuntimeService.save_account()``. No account is a
setting the user can fix (InputError); an account IBM refuses or cannot be
reached with is transient.
"""

from functools import lru_cache

from qiskit_ibm_runtime import QiskitRuntimeService

from qkan_orch.backends.accounts import accounts, redact
from qkan_orch.backends.base import TransientBackendError
from qkan_orch.models.errors import InputError

NO_ACCOUNT = (
    "needs an IBM Quantum account: set QKAN_IBM_TOKEN (and QKAN_IBM_INSTANCE), or save one with "
    "QiskitRuntimeService.save_account(); ibm:fake_<device> runs offline"
)


@lru_cache
def runtime_service() -> QiskitRuntimeService:
    """The account's Runtime service, once per process (its construction is a network round trip)."""
    acc = accounts()
    try:
        if acc.ibm_token is not None:
            return QiskitRuntimeService(channel=acc.ibm_channel, token=acc.ibm_token.get_secret_value(),
                                        instance=acc.ibm_instance)
        return QiskitRuntimeService()
    except Exception as exc:
        if type(exc).__name__ == "AccountNotFoundError":
            raise InputError("backend", f"ibm:<backend> {NO_ACCOUNT}") from None
        raise TransientBackendError(redact(
            f"IBM Quantum did not accept the configured account or cannot be reached ({type(exc).__name__}: {exc})"
        )) from None
