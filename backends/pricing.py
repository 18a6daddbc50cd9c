"""Public list prices of the hardware we submit to: a dated table, used before anything is submitted.

Prices change; the table says when its figures were published and where. They
were not re-read from this build machine (it reaches no provider website), so
``PRICES_AS_OF`` is the publication the figures come from. An estimate is an
upper bound for budgets and quotes, never an invoice.
"""

from qkan_orch.backends.base import Price

PRICES_AS_OF = "2025-06 (aws.amazon.com/braket/pricing, ibm.com/quantum/pricing)"

# Amazon Braket QPUs: USD 0.30 per task plus a per-shot price by device.
BRAKET_PER_TASK = 0.30
BRAKET_PER_SHOT = {
    "ionq/Aria-1": 0.03,
    "ionq/Aria-2": 0.03,
    "ionq/Forte-1": 0.08,
    "ionq/Forte-Enterprise-1": 0.08,
    "iqm/Garnet": 0.00145,
    "iqm/Emerald": 0.0016,
    "rigetti/Ankaa-3": 0.0009,
}
BRAKET_REGIONS = {
    "ionq/Aria-1": "us-east-1", "ionq/Aria-2": "us-east-1", "ionq/Forte-1": "us-east-1",
    "ionq/Forte-Enterprise-1": "us-east-1", "iqm/Garnet": "eu-north-1", "iqm/Emerald": "eu-north-1",
    "rigetti/Ankaa-3": "us-west-1",
}
# Qubits of those devices and of the on-demand simulators, as their providers publish them (quotes without
# an account: backends.published).
BRAKET_QUBITS = {
    "ionq/Aria-1": 25, "ionq/Aria-2": 25, "ionq/Forte-1": 36, "ionq/Forte-Enterprise-1": 36,
    "iqm/Garnet": 20, "iqm/Emerald": 54, "rigetti/Ankaa-3": 84,
    "amazon/sv1": 34, "amazon/dm1": 17, "amazon/tn1": 50,
}
# Amazon Braket on-demand simulators bill per minute of run time (minimum 3 s per task).
BRAKET_SIMULATOR_PER_MINUTE = {"amazon/sv1": 0.075, "amazon/dm1": 0.075, "amazon/tn1": 0.275}

# IBM Quantum pay-as-you-go: USD 96 per QPU minute.
IBM_PER_SECOND = 96.0 / 60.0


def braket_price(device_path: str) -> Price | None:
    """Price of ``<provider>/<device>`` (the part of the ARN after ``device/qpu/``), or None if unlisted."""
    if device_path in BRAKET_PER_SHOT:
        return Price(per_task=BRAKET_PER_TASK, per_shot=BRAKET_PER_SHOT[device_path],
                     source=f"Amazon Braket list price, {PRICES_AS_OF}")
    if device_path in BRAKET_SIMULATOR_PER_MINUTE:
        return Price(per_second=BRAKET_SIMULATOR_PER_MINUTE[device_path] / 60.0,
                     source=f"Amazon Braket list price, {PRICES_AS_OF}")
    return None


def ibm_price() -> Price:
    return Price(per_second=IBM_PER_SECOND, source=f"IBM Quantum pay-as-you-go, {PRICES_AS_OF}")
