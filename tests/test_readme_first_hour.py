"""The README's "First hour" run as printed: ``qkan-orch serve`` in one shell, the second block in another (the
same folder, real processes: embedded Redis, Celery worker, SQLite, HTTP, curl); then the worker's log holds no
third-party INFO line and names the job on every line the job's steps logged."""

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from qkan_orch.service.processes import free_port, stop_group, wait_for_api

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BIN = Path(sys.executable).parent
LINE = re.compile(r"^\[[^\]]*: (?P<level>[A-Z]+)/(?P<process>[^\]]*)\] "
                  r"(?P<logger>[\w.]+)(?: job=(?P<job>[\w-]+))?: ", re.M)  # job_logging.FORMAT


def block(tag: str) -> str:
    """The README's one fenced ```bash <tag>``` block."""
    found = re.findall(rf"^```bash {re.escape(tag)}\n(.*?)^```$", README, flags=re.DOTALL | re.MULTILINE)
    assert len(found) == 1, f"the README has one ```bash {tag} block"
    return found[0]


def bash(script: str, env: dict[str, str], cwd: Path, **kwargs: object) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + script], env=env, cwd=cwd, **kwargs)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """The serve block running in a fresh folder, on a free port; the environment of a newcomer's second shell."""
    folder = tmp_path_factory.mktemp("first-hour")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QKAN_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", QKAN_API_PORT=str(port),
               QKAN_URL=f"http://127.0.0.1:{port}")
    with open(folder / "serve.log", "wb") as log:
        process = bash(block("first-hour-serve"), env, folder, stdout=log, stderr=subprocess.STDOUT,
                       start_new_session=True)
    try:
        def running() -> None:
            assert process.poll() is None, (folder / "serve.log").read_text()

        wait_for_api(env["QKAN_URL"], timeout=120, check=running)
        yield folder, env
    finally:
        stop_group(process, timeout=30)


@pytest.fixture(scope="module")
def first_hour(served: tuple[Path, dict[str, str]]) -> tuple[Path, subprocess.CompletedProcess]:
    folder, env = served
    process = bash(block("first-hour"), env, folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=600)
    done = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    assert done.returncode == 0, f"{out}\n{err}\n" + (folder / "qkan-data" / "worker.log").read_text()
    return folder, done


def test_the_first_hour_block_runs_as_printed(first_hour: tuple[Path, subprocess.CompletedProcess]) -> None:
    folder, done = first_hour
    x = np.load(folder / "x.npy")
    assert x.shape == (16, 2)
    assert (folder / "x.csv").read_text().splitlines()[0] == "x1,x2"
    assert np.allclose(np.loadtxt(folder / "x.csv", delimiter=",", skiprows=1), x)
    with safe_open(folder / "model.safetensors", "np") as model:
        assert model.keys()
    # on stdout: the second upload (the other ids go to variables), then the dry run's quote
    upload, *quote = done.stdout.splitlines()
    assert uuid.UUID(upload)  # the repeated upload: the model's id, nothing else
    assert quote[0].startswith("ibm:ibm_torino: 16 samples, 2 rounds, 144 edge circuits, 4 per circuit")
    assert "USD" in quote[1] and quote[2].startswith("assumes: no IBM Quantum account")
    assert done.stderr.count("succeeded") == 1  # submit --wait
    y_lines = (folder / "y.csv").read_text().splitlines()
    assert y_lines[0] == "y0" and len(y_lines) == 17
    assert (folder / "y_err.csv").read_text().splitlines()[0] == "y0"
    body = json.loads((folder / "result.json").read_text())  # curl with the Bearer header
    y = np.loadtxt(folder / "y.csv", delimiter=",", skiprows=1).reshape(-1, 1)
    assert np.allclose(np.asarray(body["outputs"]), y)
    assert np.load(folder / "y_noisy.npy").shape == (16, 1)
    compared = re.search(r"vs exact: RMSE ([\d.e-]+), max error ([\d.e-]+), σ from shots ([\d.e-]+), slope ([\d.e-]+)",
                         done.stderr)
    assert compared, done.stderr
    rmse, max_error, sigma, slope = map(float, compared.groups())
    assert 0 < rmse <= max_error < 1 and 0 < sigma < 0.2 and 0.5 < slope < 1.5


def test_the_worker_logs_third_parties_at_warning_and_ours_with_the_job_id(
        first_hour: tuple[Path, subprocess.CompletedProcess]) -> None:
    folder, _ = first_hour
    log = (folder / "qkan-data" / "worker.log").read_text()
    lines = list(LINE.finditer(log))
    assert lines, log
    info = [m for m in lines if m["level"] in ("INFO", "DEBUG")]
    foreign = [m.group(0) for m in info if not m["logger"].startswith(("qkan", "celery"))]
    assert not foreign, foreign  # qiskit's transpiler passes among them before
    assert "Pass:" not in log
    job_id = json.loads((folder / "result.json").read_text())["job_id"]
    ours = [m for m in lines if m["logger"].startswith("qkan") and m["process"].startswith("ForkPool")]
    assert ours, log  # the job's steps (run in the pool's processes) logged
    assert all(m["job"] == job_id for m in ours), [m.group(0) for m in ours]  # the one job this worker ran


def test_the_api_logs_its_own_lines_with_the_job_id_and_no_third_party_info(
        first_hour: tuple[Path, subprocess.CompletedProcess]) -> None:
    folder, _ = first_hour
    log = (folder / "serve.log").read_text()  # serve's terminal: the API's lines (uvicorn's own format aside)
    job_id = json.loads((folder / "result.json").read_text())["job_id"]
    ours = [m for m in LINE.finditer(log) if m["logger"].startswith("qkan.api")]
    assert any(m["job"] == job_id and "queued: 16 samples on aer" in log[m.end():].split("\n", 1)[0]
               for m in ours), log
    assert all(m["job"] for m in ours if m["level"] == "INFO"), log  # every INFO line names its job
    assert not [m.group(0) for m in LINE.finditer(log) if not m["logger"].startswith(("qkan", "celery"))], log
