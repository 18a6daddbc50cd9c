"""docker-compose.yml, run without Docker: each service's own command and settings, on this machine.

There is no Docker engine here, so the compose file is read rather than trusted: every service
built from our Dockerfile is started as a local process with exactly its ``command`` and the
settings of its ``env_file``, only the compose host names pointed at the local Redis and
PostgreSQL. A misspelt setting, a wrong queue or a command that does not start fails here.
"""

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from conftest import make_inputs, make_model
from qkan_orch.backends.accounts import ProviderAccounts
from qkan_orch.client import Client, JobState
from qkan_orch.models import save_model
from qkan_orch.service.processes import free_port, stop_groups, wait_until
from qkan_orch.service.settings import Settings
from service_env import SYSTEM_POSTGRES, SYSTEM_REDIS, postgres_url, require, system_redis_url

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
BIN = Path(sys.executable).parent  # qkan-orch and celery of this environment
OURS = ("api", "worker-local", "worker-ibm", "worker-braket", "flower")
WORKER_QUEUES = {"worker-local": "local", "worker-ibm": "ibm", "worker-braket": "braket"}

T = TypeVar("T")


# -- reading the compose file as Compose would ------------------------------------------------

def load_compose() -> dict[str, Any]:
    with COMPOSE.open() as f:
        return yaml.safe_load(f)  # resolves the x-app anchor and its << merges


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as Compose reads an env_file: blank lines and # comments skipped, quotes dropped."""
    settings = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        settings[key.strip()] = value
    return settings


def env_file_settings(service: dict[str, Any]) -> dict[str, str]:
    """The settings of a service's env_file(s), read from the shipped ``.example`` a user copies."""
    files = service.get("env_file") or []
    settings: dict[str, str] = {}
    for item in [files] if isinstance(files, str | dict) else files:
        name = item if isinstance(item, str) else item["path"]
        settings.update(read_env_file(ROOT / f"{name}.example"))
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(entry.partition("=")[::2] for entry in environment)
    settings.update({k: str(v) for k, v in environment.items()})
    return settings


_COMPOSE_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?::?-([^}]*))?\}|(\w+))")


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's own substitution: ``$$`` → ``$``, ``${VAR}``, ``${VAR:-default}``, ``$VAR``."""
    def one(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        return variables.get(match.group(2) or match.group(4)) or match.group(3) or ""

    return _COMPOSE_VARIABLE.sub(one, text)


def compose_variables(text: str) -> list[str]:
    """Variables Compose itself would substitute (from the shell and .env, never from env_file)."""
    return [m.group(0) for m in _COMPOSE_VARIABLE.finditer(text) if not m.group(1)]


def commands(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return [command] if isinstance(command, str) else list(command)


# -- the stack as local processes -------------------------------------------------------------

def localize(text: str, ports: dict[str, int]) -> str:
    """Published ports → free local ones (same container port, same local port), 0.0.0.0 → loopback."""
    text = re.sub(r"(--port[= ])(\d+)", lambda m: m.group(1) + str(ports.setdefault(m.group(2), free_port())), text)
    return re.sub(r"(--host[= ])0\.0\.0\.0\b", r"\g<1>127.0.0.1", text)


class Stack:
    """Our compose services as process groups, each logging to ``<folder>/<service>.log``."""

    def __init__(self, folder: Path, redis_url: str, database_url: str) -> None:
        self.folder = folder
        self.redis_url, self.database_url = redis_url, database_url
        self.ports: dict[str, int] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self.envs: dict[str, dict[str, str]] = {}
        self.token = ""

    def environment(self, service: dict[str, Any]) -> dict[str, str]:
        """The service's env_file settings, compose host names rewritten to this machine."""
        settings = env_file_settings(service)
        redis_host = urlsplit(settings["QKAN_REDIS_URL"]).hostname
        database_host = urlsplit(settings["QKAN_DATABASE_URL"]).hostname
        assert (redis_host, database_host) == ("redis", "postgres"), "deploy.env.example must name the compose services"
        settings |= {
            "QKAN_REDIS_URL": self.redis_url,
            "QKAN_DATABASE_URL": self.database_url,
            "QKAN_DATA_DIR": str(self.folder / "data"),
            "QKAN_WORKER_CONCURRENCY": "1",  # three workers on a 2-core machine
            "FLOWER_ADDRESS": "127.0.0.1",  # in the container it listens on all addresses; here loopback only
        }
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("QKAN_", "CELERY_", "FLOWER_"))}
        return {**inherited, **settings, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}

    def argv(self, service: dict[str, Any]) -> list[str]:
        """The command exactly as the container runs it, but for ports, host and executable paths.

        Compose's own ``${VAR}`` would come from the shell and .env: neither exists on a clean
        machine, so none is given here; a shell in the command expands the service's environment.
        """
        command = service["command"]
        if isinstance(command, str):
            argv = shlex.split(localize(interpolate(command, {}), self.ports))
        else:
            argv = [localize(interpolate(part, {}), self.ports) for part in command]
        if (BIN / argv[0]).exists():
            argv[0] = str(BIN / argv[0])
        return argv

    def start(self, name: str, service: dict[str, Any]) -> None:
        self.envs[name] = self.environment(service)
        with (self.folder / f"{name}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                self.argv(service), env=self.envs[name], cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def url(self, container_port: int) -> str:
        return f"http://127.0.0.1:{self.ports[str(container_port)]}"

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tails(self, lines: int = 30) -> str:
        parts = []
        for name, process in self.processes.items():
            state = "running" if process.poll() is None else f"exited {process.returncode}"
            tail = "\n".join(self.log(name).splitlines()[-lines:])
            parts.append(f"----- {name} ({state}): {self.folder / name}.log -----\n{tail}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
        assert not dead, f"services exited early: {dead}\n{self.tails()}"

    def wait_for(self, what: str, predicate: Callable[[], T], timeout: float) -> T:
        """Poll ``predicate`` until it is truthy; fail with every log's tail after ``timeout`` s."""
        try:
            return wait_until(predicate, what, timeout, check=self.check_alive, interval=0.25)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.tails()}") from None

    @contextmanager
    def logs_on_failure(self) -> Iterator[None]:
        """Print every service's log tail (pytest shows it with the failure) and re-raise."""
        try:
            yield
        except BaseException:
            print(self.tails(60))
            raise

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown of every service at once, SIGKILL whatever is left at the deadline."""
        stop_groups(self.processes.values(), timeout)


def _status(url: str) -> int:
    return httpx.get(url, timeout=3, follow_redirects=True).status_code


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API, three workers and Flower from docker-compose.yml, ready, with an API key."""
    require(SYSTEM_REDIS)
    require(SYSTEM_POSTGRES)
    services = load_compose()["services"]
    with system_redis_url() as redis_url, postgres_url() as database_url:
        stack = Stack(tmp_path_factory.mktemp("compose"), redis_url, database_url)
        try:
            for name in OURS:
                stack.start(name, services[name])
            stack.wait_for("GET /readyz on the api to answer 200", lambda: _status(f"{stack.url(8000)}/readyz") == 200,
                           timeout=60)
            keys = subprocess.run([str(BIN / "qkan-orch"), "keys", "create", "--name", "compose"],
                                  env=stack.envs["api"], cwd=stack.folder, capture_output=True, text=True, timeout=60)
            assert keys.returncode == 0 and len(keys.stdout.split()) == 1, (
                f"qkan-orch keys create: exit {keys.returncode}\n{keys.stdout}\n{keys.stderr}")
            stack.token = keys.stdout.strip()
            yield stack
        finally:
            stack.stop()


# -- the file itself --------------------------------------------------------------------------

def test_compose_file_builds_our_services_from_the_dockerfile_after_healthy_redis_and_postgres() -> None:
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {*OURS, "redis", "postgres", "prometheus", "grafana"}  # those two: test_monitoring_config
    assert services["redis"]["image"] == "redis:7" and services["postgres"]["image"] == "postgres:16"
    for name in ("redis", "postgres"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"
    postgres = services["postgres"]
    assert {postgres["environment"][k] for k in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")} == {"qkan"}
    volume = postgres["volumes"][0].split(":")
    assert volume[0] in compose["volumes"] and volume[1] == "/var/lib/postgresql/data"

    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert "pip install -c constraints.txt ." in dockerfile
    for name in OURS:
        service = services[name]
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}, name
        assert service["image"] == services["api"]["image"], f"{name} runs another image than the api"
        assert service["env_file"] == "deploy.env", name
        assert service["restart"] in ("unless-stopped", "always"), name
        needs = {"redis"} if name == "flower" else {"redis", "postgres"}
        assert {k: v["condition"] for k, v in service["depends_on"].items()} == dict.fromkeys(needs, "service_healthy")
    for name, queue in WORKER_QUEUES.items():
        assert shlex.split(services[name]["command"]) == ["qkan-orch", "worker", "--queues", queue]
    assert services["api"]["ports"] == ["8000:8000"]
    assert shlex.split(services["api"]["command"]) == ["qkan-orch", "serve", "--host", "0.0.0.0", "--port", "8000"]

    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "deploy.env"} <= set(dockerignore)
    assert not {"README.md", "pyproject.toml", "constraints.txt"} & set(dockerignore)  # pip install . needs them


def test_the_env_file_holds_only_real_settings_and_points_at_the_compose_services() -> None:
    text = (ROOT / "deploy.env.example").read_text()
    settings = read_env_file(ROOT / "deploy.env.example")
    assert settings["QKAN_REDIS_URL"] == "redis://redis:6379/0"
    assert settings["QKAN_DATABASE_URL"] == "postgresql+psycopg://qkan:qkan@postgres:5432/qkan"
    assert settings["QKAN_DATA_DIR"] == "/data" and settings["QKAN_LOG_LEVEL"] == "INFO"
    named = set(settings) | set(re.findall(r"^#\s*(QKAN_\w+)=", text, re.MULTILINE))
    fields = {*Settings.model_fields, *ProviderAccounts.model_fields}
    unknown = {k for k in named if k.removeprefix("QKAN_").lower() not in fields}
    assert not unknown, f"not settings of service/settings.py or backends/accounts.py: {unknown}"


def test_commands_leave_no_variable_for_compose_to_fill() -> None:
    """Compose fills ${VAR} from the shell and .env only: a variable of deploy.env would come out empty."""
    services = load_compose()["services"]
    for name in OURS:
        found = [v for part in commands(services[name]) for v in compose_variables(part)]
        assert not found, f"{name}: {found} would be blank in `docker compose up` (escape as $$ for the container)"


# -- the stack running ------------------------------------------------------------------------

def test_the_api_answers_and_worker_local_runs_an_exact_job(stack: Stack, tmp_path: Path) -> None:
    with stack.logs_on_failure():
        ready = httpx.get(f"{stack.url(8000)}/readyz", timeout=10)
        assert (ready.status_code, ready.json()) == (200, {"database": "ok", "broker": "ok"})
        save_model(make_model(width=[2, 2, 1], reps=1).float(), str(tmp_path / "m.safetensors"))
        with Client(stack.url(8000), stack.token) as qc:
            model_id = qc.upload_model(tmp_path / "m.safetensors").id
            job = qc.submit(model_id, make_inputs(4, 2), backend="exact")
            final = qc.wait(job.id, timeout=120, progress=False)
            assert final.state == JobState.SUCCEEDED, final
            outputs, _ = qc.result(job.id)
        assert outputs.shape == (4, 1)
        received = re.compile(r"Task qkan\.advance\[[\w-]+\] received")
        stack.wait_for("worker-local to log the task", lambda: received.search(stack.log("worker-local")), 10)
        for name in ("worker-ibm", "worker-braket"):
            assert not received.search(stack.log(name)), f"{name} took a task of the local queue"


def test_each_worker_listens_on_its_own_queue(stack: Stack) -> None:
    with stack.logs_on_failure(), Client(stack.url(8000), stack.token) as qc:
        def queues_of_workers() -> list[tuple[str, ...]]:
            found = sorted(tuple(w.queues) for w in qc.queues().workers)
            return found if len(found) == len(WORKER_QUEUES) else []

        found = stack.wait_for("/v1/queues to list three live workers", queues_of_workers, timeout=30)
        assert found == sorted((q,) for q in WORKER_QUEUES.values())


def test_flower_answers_on_its_port(stack: Stack) -> None:
    with stack.logs_on_failure():
        flower = stack.url(5555)
        stack.wait_for("Flower's /healthcheck to answer 200", lambda: _status(f"{flower}/healthcheck") == 200, 30)
        assert _status(f"{flower}/") == 200

        def workers_seen() -> set[str]:  # from the workers' events on the broker Flower was given
            workers = httpx.get(f"{flower}/workers?json=1", timeout=5).json()["data"]
            names = {w["hostname"].partition("@")[0] for w in workers}
            return names if names >= {f"qkan-{q}" for q in WORKER_QUEUES.values()} else set()

        stack.wait_for("Flower to see the three workers", workers_seen, 30)
