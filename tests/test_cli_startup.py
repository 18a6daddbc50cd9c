"""``qkan-orch`` commands that only talk to the service start without torch, Qiskit or a provider SDK.

Each command runs in a fresh interpreter through the CLI's own entry point; a wrapper records which top-level
packages were imported by the time it exits. numpy is not on the list: ``qkan_orch.client`` (whose ``ApiError``
the CLI catches for every command) imports it. Timings are in bench/cli_startup.py, not here.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from qkan_orch.backends.base import DEFAULT_SHOTS
from qkan_orch.models.functions import FUNCTIONS

HEAVY = {"torch", "qiskit", "qiskit_aer", "qiskit_ibm_runtime", "braket", "pennylane", "mitiq"}
SERVICE = {"sqlalchemy", "alembic", "fastapi", "uvicorn", "celery", "redis"}  # the client commands need none
WRAPPER = """
import json, runpy, sys
out, sys.argv = sys.argv[1], ["qkan-orch", *sys.argv[2:]]
try:
    runpy.run_module("qkan_orch.cli.main", run_name="__main__")
except SystemExit as exc:
    code = exc.code
with open(out, "w") as fh:
    json.dump({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}, fh)
"""


def closed_url() -> str:
    """A local port nothing listens on: connections are refused at once, no network wait."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def run_cli(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[int, set[str], str]:
    """Exit code, top-level packages imported, and stderr of one CLI run in a fresh process."""
    record = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(record), *args], capture_output=True, text=True,
                          timeout=120, env=env)
    assert record.exists(), proc.stderr
    data = json.loads(record.read_text())
    return data["code"], set(data["modules"]), proc.stderr


@pytest.mark.parametrize("args", [
    ["--help"], ["status", "--help"], ["result", "--help"], ["cancel", "--help"], ["models", "--help"],
    ["submit", "--help"], ["keys", "--help"], ["demo", "--help"],
])
def test_help_imports_nothing_heavy(tmp_path: Path, args: list[str]) -> None:
    code, modules, _ = run_cli(tmp_path, *args)
    assert code == 0
    assert not modules & (HEAVY | SERVICE)


@pytest.mark.parametrize("args", [["status", "JOB"], ["wait", "JOB"], ["result", "JOB"], ["cancel", "JOB"], ["models"],
                                  ["models", "show", "--id", "M"]])
def test_client_commands_import_nothing_heavy_and_fail_in_one_line(tmp_path: Path, args: list[str]) -> None:
    url = closed_url()
    code, modules, stderr = run_cli(tmp_path, *args, "--url", url)
    assert code == 1
    assert stderr.count("\n") == 1 and stderr.startswith("qkan-orch: error: cannot reach") and url in stderr
    assert not modules & (HEAVY | SERVICE)


def test_keys_list_needs_the_database_but_not_torch(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    env = {**os.environ, "QKAN_DATA_DIR": str(data)}
    env.pop("QKAN_DATABASE_URL", None)
    code, modules, stderr = run_cli(tmp_path, "keys", "list", env=env)
    assert code == 0, stderr
    assert "sqlalchemy" in modules
    assert not modules & HEAVY


def test_flags_that_need_torch_are_added_when_their_command_runs(tmp_path: Path) -> None:
    """predict's and train's flags load lazily; their help and checks are unchanged."""
    cli = str(Path(sys.executable).parent / "qkan-orch")
    predict = subprocess.run([cli, "predict", "--help"], capture_output=True, text=True, timeout=120)
    assert predict.returncode == 0 and f"default {DEFAULT_SHOTS} on sampling backends" in predict.stdout
    train = subprocess.run([cli, "train", "--help"], capture_output=True, text=True, timeout=120)
    assert train.returncode == 0 and "{" + ",".join(sorted(FUNCTIONS)) + "}" in train.stdout
    wrong = subprocess.run([cli, "train", "--function", "nope", "--out", str(tmp_path / "m.safetensors")],
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "invalid choice: 'nope'" in wrong.stderr
    missing = subprocess.run([cli, "predict", "--inputs", "x.npy"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "--model, --out" in missing.stderr

