"""Python client of the QKAN Orchestrator REST API.

    from qkan_orch.client import Client
    with Client("http://127.0.0.1:8000", api_key="qk_...") as qc:
        model = qc.upload_model("model.safetensors")
        job = qc.submit(model["id"], x, backend="aer:fake_sherbrooke", shots=4000)
        qc.wait(job["id"])
        outputs, stderr = qc.result(job["id"])
"""

from qkan_orch.client.api import ApiError, Client

__all__ = ["ApiError", "Client"]
