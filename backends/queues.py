"""Which queue serves a backend: one per provider family, so a slow QPU never starves simulators.

The backends know which of them wait on a provider; the API routes a job here
and the workers subscribe to these queues.
"""

QUEUES = ("local", "ibm", "braket")


def queue_for(backend: str) -> str:
    if backend.startswith(("ibm:", "pennylane:qiskit.remote")):
        return "ibm"
    if backend.startswith(("braket:", "pennylane:braket.aws.")) and backend not in ("braket:local", "braket:local_dm"):
        return "braket"
    return "local"
