"""``qkan-orch serve`` with nothing configured: embedded Redis, one worker, SQLite — then the CLI on top."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil

from conftest import make_inputs, make_model
from qkan_orch.models import save_model
from qkan_orch.service.processes import free_port, stop_group, wait_for_api

BIN = Path(sys.executable).parent
DECOYS = ("models", "client", "service", "cli", "workers", "backends", "circuits")


def cli(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "qkan-orch"), *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


@contextmanager
def serving(tmp: Path, cwd: Path | None = None) -> Iterator[tuple[dict[str, str], subprocess.Popen]]:
    """``qkan-orch serve`` with only a data folder and a port set, ready, with an API key in the env it yields."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QKAN_")}
    env.update(QKAN_DATA_DIR=str(tmp / "data"), QKAN_API_PORT=str(port), QKAN_URL=f"http://127.0.0.1:{port}")
    with open(tmp / "serve.log", "wb") as log:
        process = subprocess.Popen([str(BIN / "qkan-orch"), "serve"], env=env, cwd=cwd, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def still_running() -> None:
            assert process.poll() is None, (tmp / "serve.log").read_text()

        wait_for_api(env["QKAN_URL"], timeout=120, check=still_running)
        created = cli("keys", "create", "--name", "cli", env=env, cwd=cwd)
        assert created.returncode == 0, created.stderr
        env["QKAN_API_KEY"] = created.stdout.strip()
        yield env, process
    finally:
        stop_group(process, timeout=60)  # SIGTERM: serve stops its worker and Redis on the way out


def test_serve_embedded_default_and_the_cli_on_top(tmp_path: Path) -> None:
    """Run from a folder whose own ``models/`` (``client/``, ``service/`` …) would raise on import: a user's
    packages that share our names never replace ours, in serve, its worker or the CLI. (One serve for both
    checks: it starts an embedded Redis and a worker; a separate test of the decoys repeated all of that. serve
    stopping cleanly on SIGTERM, as in that test, is test_supervision's SIGTERM test; SIGINT is here.)"""
    folder = tmp_path / "project"
    for name in DECOYS:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('decoy {name} imported')\n")
    with serving(tmp_path, cwd=folder) as (env, process):
        tmp = tmp_path
        log = (tmp / "serve.log").read_text()
        assert "embedded mode" in log and str(tmp / "data") in log
        assert (tmp / "data" / "qkan.db").exists() and (tmp / "data" / "redis").is_dir()

        save_model(make_model(width=[2, 3, 1], reps=2).float(), str(tmp / "m.safetensors"))
        uploaded = cli("models", "upload", "--file", str(tmp / "m.safetensors"), "--name", "mine", env=env,
                       cwd=folder)
        assert uploaded.returncode == 0, uploaded.stderr
        model_id = uploaded.stdout.strip()  # the id alone (--json: the record)
        assert model_id in cli("models", env=env, cwd=folder).stdout

        np.save(tmp / "x.npy", make_inputs(6, 2))
        submitted = cli("submit", "--model", model_id, "--inputs", str(tmp / "x.npy"), "--backend", "aer",
                        "--shots", "500", "--wait", "--quiet", env=env, cwd=folder)
        assert submitted.returncode == 0, submitted.stderr + (tmp / "data" / "worker.log").read_text()
        job_id = submitted.stdout.strip()
        status = json.loads(cli("status", job_id, env=env, cwd=folder).stdout)
        assert status["state"] == "succeeded" and status["shots_used"] == 500 * status["executions"]
        waited = cli("wait", job_id, "--quiet", env=env, cwd=folder)
        assert waited.returncode == 0 and waited.stderr.strip() == "succeeded", waited.stderr
        fetched = cli("result", job_id, "--out", str(tmp / "y.csv"), "--stderr-out", str(tmp / "e.csv"), env=env,
                      cwd=folder)
        assert fetched.returncode == 0, fetched.stderr
        assert np.loadtxt(tmp / "y.csv", ndmin=2, skiprows=1).shape == (6, 1)
        assert "±" in cli("result", job_id, env=env, cwd=folder).stdout
        again = cli("cancel", job_id, env=env, cwd=folder)
        assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1 and "already" in again.stderr
        missing = cli("status", "no-such-job", env=env, cwd=folder)
        assert missing.returncode == 2 and "HTTP 404" in missing.stderr and "Traceback" not in missing.stderr

        children = psutil.Process(process.pid).children(recursive=True)
        assert any("redis-server" in c.name() for c in children)
        assert any("worker" in " ".join(c.cmdline()) for c in children)
        process.send_signal(signal.SIGINT)  # Ctrl-C: the API stops, then its worker and Redis
        process.wait(60)
        gone = psutil.wait_procs(children, timeout=30)[1]
        assert not gone, f"left running: {[p.name() for p in gone]}"
    logs = (tmp_path / "serve.log").read_text() + (tmp_path / "data" / "worker.log").read_text()
    assert "decoy" not in logs
