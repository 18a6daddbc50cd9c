"""``Client``: a thin, typed wrapper over the REST API (httpx underneath); answers are ``responses`` records."""

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tqdm.auto import tqdm

from qkan_orch.client.responses import Backend, Comparison, Job, JobResult, Model, Page, Queues, Quote
from qkan_orch.service.store.states import JobState

RATE_LIMIT_WAIT = 30.0  # seconds one call may spend waiting out its key's request rate limit


class ApiError(Exception):
    """An error response: HTTP status plus the service's ``code``, ``message`` and ``field``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.status, self.code, self.message, self.field = status, code, message, field


class Client:
    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url = (url or os.environ.get("QKAN_URL") or "http://127.0.0.1:8000").rstrip("/")
        key = api_key or os.environ.get("QKAN_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- models ----------------------------------------------------------------------------------

    def upload_model(self, path: str | Path, spec: str | Path | None = None, name: str | None = None) -> Model:
        """Content-addressed: the same spec and weights again (any format, any name) give back the same model."""
        path = Path(path)
        files: dict[str, Any] = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
        if spec is not None:
            files["spec"] = (Path(spec).name, Path(spec).read_bytes(), "application/json")
        return Model.from_json(self._call("POST", "/v1/models", files=files, data={"name": name} if name else None))

    def models(self, limit: int = 50, offset: int = 0) -> Page[Model]:
        return Page.from_json(self._call("GET", "/v1/models", params={"limit": limit, "offset": offset}),
                              Model.from_json)

    def model(self, model_id: str) -> Model:
        return Model.from_json(self._call("GET", f"/v1/models/{model_id}"))

    def delete_model(self, model_id: str) -> None:
        self._call("DELETE", f"/v1/models/{model_id}")

    def extend(self, model_id: str, reps: int, name: str | None = None) -> Model:
        """Layer extension: a new stored model with ``reps`` re-uploads per QKAN edge computing the same function
        (pz/rpz ansätze), to train further from where this one stopped."""
        body = {"reps": reps, **({"name": name} if name else {})}
        return Model.from_json(self._call("POST", f"/v1/models/{model_id}/extend", json=body))

    def train(self, spec: dict, function: str | None = None, csv: str | Path | None = None, **params: Any) -> Job:
        """Start a training job (``optimizer``, ``steps``, ``lr``, ``seed``, ``samples``, ``name``); a sequence
        spec trains on a built-in series (``function``) or a CSV/.npy of windows, one per row, target last.
        ``noise="fake_melbourne"`` (qkan, hqkan) trains through that device's emulated noise, on ``qubits``
        ("auto" or "0,1,2,3"); the model then says so in ``Model.noise``."""
        data = {"spec": json.dumps(spec), **{k: str(v) for k, v in params.items() if v is not None}}
        if function:
            data["function"] = function
        files = {"csv": (Path(csv).name, Path(csv).read_bytes(), "text/csv")} if csv else None
        return Job.from_json(self._call("POST", "/v1/models/train", data=data, files=files))

    # -- jobs ------------------------------------------------------------------------------------

    def submit(
        self,
        model_id: str,
        inputs: np.ndarray | list | str | Path,
        backend: str = "exact",
        shots: int | None = None,
        pack: int | str | None = None,
        options: dict | None = None,
        idempotency_key: str | None = None,
        mitigation: str | dict | None = None,
    ) -> Job:
        """Submit inference; ``inputs`` is an array, or the path of a .npy/.csv to upload.

        ``mitigation``: "none" | "readout" | "zne" | "readout+zne" or a dict of settings; None takes the
        backend's default (read-out correction on noisy simulators and QPUs).
        """
        fields = {"model_id": model_id, "backend": backend, "shots": shots, "pack": pack,
                  "options": options or {}, "idempotency_key": idempotency_key, "mitigation": mitigation}
        fields = {k: v for k, v in fields.items() if v is not None}
        if isinstance(inputs, str | Path):
            path = Path(inputs)
            form = {k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in fields.items()}
            files = {"inputs_file": (path.name, path.read_bytes(), "application/octet-stream")}
            return Job.from_json(self._call("POST", "/v1/jobs", data=form, files=files))
        body = {**fields, "inputs": np.asarray(inputs, dtype=float).tolist()}
        return Job.from_json(self._call("POST", "/v1/jobs", json=body))

    def estimate(
        self,
        model_id: str,
        samples: int | np.ndarray | list,
        backend: str = "exact",
        shots: int | None = None,
        pack: int | str | None = None,
        options: dict | None = None,
        mitigation: str | dict | None = None,
    ) -> Quote:
        """What ``submit`` with these settings would run and cost, checked as it would be; nothing is stored.

        ``samples``: the inputs' row count, or the inputs. Hardware without an account is quoted from its
        published limits (``Quote.configured`` is False, ``Quote.assumptions`` says what was assumed).
        """
        count = samples if isinstance(samples, int) else len(samples)
        body = {"model_id": model_id, "samples": count, "backend": backend, "shots": shots, "pack": pack,
                "options": options or {}, "mitigation": mitigation}
        return Quote.from_json(self._call("POST", "/v1/estimate", json={k: v for k, v in body.items()
                                                                         if v is not None}))

    def status(self, job_id: str) -> Job:
        return Job.from_json(self._call("GET", f"/v1/jobs/{job_id}"))

    def jobs(self, state: JobState | str | None = None, backend: str | None = None, model_id: str | None = None,
             limit: int = 50, offset: int = 0) -> Page[Job]:
        """Your jobs, newest first, those matching every filter given."""
        filters = {"state": state, "backend": backend, "model_id": model_id, "limit": limit, "offset": offset}
        params = {k: v for k, v in filters.items() if v is not None}
        return Page.from_json(self._call("GET", "/v1/jobs", params=params), Job.from_json)

    def cancel(self, job_id: str) -> Job:
        """The job as the cancel left it: ``cancelled`` if no worker held it, else still active, cancel requested."""
        return Job.from_json(self._call("DELETE", f"/v1/jobs/{job_id}"))

    def wait(self, job_id: str, timeout: float | None = None, progress: bool = True, interval: float = 0.2) -> Job:
        """Poll until the job ends; a progress bar counts its rounds. Returns the final status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        try:
            while True:
                status = self.status(job_id)
                if progress and bar is None and status.rounds_total:
                    bar = tqdm(total=status.rounds_total, desc=f"job {job_id[:8]} {status.backend}",
                               unit="round", leave=False)
                if bar is not None:
                    bar.update(status.rounds_done - bar.n)
                    bar.set_postfix(state=status.state)
                if status.state.terminal:
                    return status
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} is still {status.state} after {timeout} s")
                time.sleep(interval)
        finally:
            if bar is not None:
                bar.close()

    def result(self, job_id: str, layers: bool = False, raw: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Outputs and their standard errors as arrays (``layers=True``: also each layer's output;
        ``raw=True``: the outputs before mitigation, the outputs themselves on an unmitigated job)."""
        body = self.job_result(job_id, layers)
        outputs, stderr = np.asarray(body.outputs), np.asarray(body.stderr)
        if raw and body.raw_outputs is not None:
            outputs, stderr = np.asarray(body.raw_outputs), np.asarray(body.raw_stderr)
        if layers:
            return outputs, stderr, [np.asarray(layer) for layer in body.layers or ()]  # type: ignore[return-value]
        return outputs, stderr

    def job_result(self, job_id: str, layers: bool = False, activations: bool = False) -> JobResult:
        """The result as sent: an inference job's outputs, or a training job's ``model_id`` and ``losses``;
        ``activations`` adds every edge's activation per layer (large: samples × edges values)."""
        params = {"layers": str(layers).lower(), "activations": str(activations).lower()}
        return JobResult.from_json(self._call("GET", f"/v1/jobs/{job_id}/result", params=params))

    def events(self, job_id: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (event, data) pairs from the server-sent event stream until the job ends."""
        with self.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as response:
            self._raise(response, response.read() if response.status_code >= 400 else b"")
            event, data = "message", ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = line[5:].strip()
                elif not line and data:
                    yield event, json.loads(data)
                    event, data = "message", ""

    # -- comparisons -----------------------------------------------------------------------------

    def compare(
        self,
        model_id: str,
        inputs: np.ndarray | list,
        backends: list[str],
        reference: str = "exact",
        shots: int | None = None,
        pack: int | str | None = None,
        options: dict | None = None,
        mitigation: str | dict | None = None,
        mitigation_per_backend: dict[str, str | dict] | None = None,
    ) -> Comparison:
        """Run ``backends`` and ``reference`` on the same inputs, one job each; ``wait_comparison`` follows it.
        ``mitigation`` applies to every backend but those ``mitigation_per_backend`` names."""
        body = {"model_id": model_id, "inputs": np.asarray(inputs, dtype=float).tolist(), "backends": list(backends),
                "reference": reference, "shots": shots, "pack": pack, "options": options or {},
                "mitigation": mitigation, "mitigation_per_backend": mitigation_per_backend}
        return Comparison.from_json(self._call("POST", "/v1/comparisons",
                                               json={k: v for k, v in body.items() if v is not None}))

    def comparison(self, comparison_id: str) -> Comparison:
        return Comparison.from_json(self._call("GET", f"/v1/comparisons/{comparison_id}"))

    def comparisons(self, limit: int = 20, offset: int = 0) -> Page[Comparison]:
        params = {"limit": limit, "offset": offset}
        return Page.from_json(self._call("GET", "/v1/comparisons", params=params), Comparison.from_json)

    def cancel_comparison(self, comparison_id: str) -> Comparison:
        return Comparison.from_json(self._call("DELETE", f"/v1/comparisons/{comparison_id}"))

    def wait_comparison(self, comparison_id: str, timeout: float | None = None, interval: float = 0.5
                        ) -> Comparison:
        """The comparison once every job has ended (TimeoutError after ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (found := self.comparison(comparison_id)).finished:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"comparison {comparison_id} not finished after {timeout} s")
            time.sleep(interval)
        return found

    # -- service ---------------------------------------------------------------------------------

    def backends(
        self, kind: str | None = None, provider: str | None = None, filter: str | None = None
    ) -> list[Backend]:
        """Backends, optionally only one kind, one provider, or names containing ``filter``."""
        params = {k: v for k, v in (("kind", kind), ("provider", provider), ("filter", filter)) if v}
        return [Backend.from_json(entry) for entry in self._call("GET", "/v1/backends", params=params)]

    def queues(self) -> Queues:
        return Queues.from_json(self._call("GET", "/v1/queues"))

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request; a ``rate_limited`` 429 is waited out as its Retry-After says, for up to
        ``RATE_LIMIT_WAIT`` seconds in all (a polling loop slows down instead of failing), then raised.

        A GET that fails in transport is sent once more on a fresh connection: the server may close an idle
        keep-alive connection just as the pool hands it out (a reset), and reading twice does no harm."""
        deadline = time.monotonic() + RATE_LIMIT_WAIT
        attempts = 2 if method == "GET" else 1
        while True:
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                attempts -= 1
                if attempts > 0:
                    continue
                raise ApiError(0, "unreachable", f"cannot reach {self.url} ({exc})") from None
            left = deadline - time.monotonic()
            if response.status_code != 429 or left <= 0 or b'"rate_limited"' not in response.content:
                break
            time.sleep(min(float(response.headers.get("Retry-After", "1")), left))
        self._raise(response, response.content)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    @staticmethod
    def _raise(response: httpx.Response, content: bytes) -> None:
        if response.status_code < 400:
            return
        try:
            error = json.load(io.BytesIO(content))["error"]
        except (ValueError, KeyError, TypeError):
            error = {"code": "http_error", "message": content.decode(errors="replace")[:200] or response.reason_phrase}
        raise ApiError(response.status_code, error.get("code", "error"), error.get("message", ""), error.get("field"))
