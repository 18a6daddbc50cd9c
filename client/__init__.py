"""Python client of the QKAN Orchestrator REST API; its answers are typed, frozen records.

    from qkan_orch.client import Client
    with Client("http://127.0.0.1:8000", api_key="qk_...") as qc:
        model = qc.upload_model("model.safetensors")
        job = qc.submit(model.id, x, backend="aer:fake_sherbrooke", shots=4000)
        done = qc.wait(job.id)  # a Job: done.state is a JobState, done.rounds its rounds
        outputs, stderr = qc.result(job.id)
        quote = qc.estimate(model.id, samples=64, backend="ibm:ibm_torino")  # no account needed
"""

from qkan_orch.client.api import ApiError, Client
from qkan_orch.client.responses import (
    Agreement,
    Backend,
    Compared,
    Comparison,
    EdgeError,
    Estimate,
    Job,
    JobError,
    JobResult,
    LayerAgreement,
    Model,
    Page,
    Queue,
    Queues,
    Quote,
    Round,
    Worker,
)
from qkan_orch.service.store.states import JobState

__all__ = [
    "Agreement", "ApiError", "Backend", "Client", "Compared", "Comparison", "EdgeError", "Estimate", "Job",
    "JobError", "JobResult", "JobState", "LayerAgreement", "Model", "Page", "Queue", "Queues", "Quote", "Round",
    "Worker",
]
