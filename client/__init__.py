"""Python client of the QKAN Orchestrator REST API.

    from client import Client
    with Client("http://127.0.0.1:8000", api_key="qk_...") as qc:
        model = qc.upload_model("model.safetensors")
        job = qc.submit(model["id"], x, backend="aer:fake_sherbrooke", shots=4000)
        qc.wait(job["id"])
        outputs, stderr = qc.result(job["id"])
"""

from client.api import ApiError, Client

__all__ = ["ApiError", "Client"]
