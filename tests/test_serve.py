"""``qkan-orch serve`` with nothing configured: embedded Redis, one worker, SQLite — then the CLI on top."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from conftest import make_inputs, make_model
from qkan_orch.models import save_model
from qkan_orch.service.embedded import free_port

BIN = Path(sys.executable).parent


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "qkan-orch"), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def served(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QKAN_")}
    env.update(QKAN_DATA_DIR=str(tmp_path / "data"), QKAN_API_PORT=str(port), QKAN_URL=f"http://127.0.0.1:{port}")
    log = open(tmp_path / "serve.log", "wb")  # closed below
    process = subprocess.Popen([str(BIN / "qkan-orch"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{env['QKAN_URL']}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        created = cli("keys", "create", "--name", "cli", env=env)
        assert created.returncode == 0, created.stderr
        env["QKAN_API_KEY"] = created.stdout.strip()
        yield env, process, tmp_path
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_serve_embedded_default_and_the_cli_on_top(served) -> None:  # type: ignore[no-untyped-def]
    env, process, tmp = served
    log = (tmp / "serve.log").read_text()
    assert "embedded mode" in log and str(tmp / "data") in log
    assert (tmp / "data" / "qkan.db").exists() and (tmp / "data" / "redis").is_dir()

    save_model(make_model(width=[2, 3, 1], reps=2).float(), str(tmp / "m.safetensors"))
    uploaded = cli("models", "upload", "--file", str(tmp / "m.safetensors"), "--name", "mine", env=env)
    assert uploaded.returncode == 0, uploaded.stderr
    model_id = json.loads(uploaded.stdout)["id"]
    assert model_id in cli("models", env=env).stdout

    np.save(tmp / "x.npy", make_inputs(6, 2))
    submitted = cli("submit", "--model", model_id, "--inputs", str(tmp / "x.npy"), "--backend", "aer",
                    "--shots", "500", "--wait", "--quiet", env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    status = json.loads(cli("status", job_id, env=env).stdout)
    assert status["state"] == "succeeded" and status["shots_used"] == 500 * status["executions"]
    fetched = cli("result", job_id, "--out", str(tmp / "y.csv"), "--stderr-out", str(tmp / "e.csv"), env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert np.loadtxt(tmp / "y.csv", ndmin=2).shape == (6, 1)
    assert "±" in cli("result", job_id, env=env).stdout
    again = cli("cancel", job_id, env=env)
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1 and "already" in again.stderr
    missing = cli("status", "no-such-job", env=env)
    assert missing.returncode == 2 and "HTTP 404" in missing.stderr and "Traceback" not in missing.stderr

    children = psutil.Process(process.pid).children(recursive=True)
    assert any("redis-server" in c.name() for c in children)
    assert any("worker" in " ".join(c.cmdline()) for c in children)
    process.send_signal(signal.SIGINT)  # Ctrl-C: the API stops, then its worker and Redis
    process.wait(60)
    gone = psutil.wait_procs(children, timeout=30)[1]
    assert not gone, f"left running: {[p.name() for p in gone]}"
