"""Finding a backend: typos get the closest names, listings filter, hardware without an account says what enables it.

The service runs on one stack (embedded Redis + SQLite): listing is the same code on every stack.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qkan_orch.backends import get_backend
from qkan_orch.client import ApiError, Client
from qkan_orch.models.errors import InputError
from qkan_orch.service.api.routes.backends import _listed
from qkan_orch.service.local import LocalService
from service_env import stack_env

CLI = str(Path(sys.executable).parent / "qkan-orch")
ACCOUNTS = ("QKAN_IBM_TOKEN", "QKAN_BRAKET_S3_BUCKET")
BRAKET_QPUS = 7  # rows of the price table


@pytest.fixture(scope="module", autouse=True)
def no_accounts() -> None:
    """No provider account in this process (the API under test) or its children; restored afterwards."""
    from qkan_orch.backends.accounts import accounts

    old = {k: os.environ.pop(k) for k in ACCOUNTS if k in os.environ}
    accounts.cache_clear()
    yield
    os.environ.update(old)
    accounts.cache_clear()


@pytest.fixture(scope="module")
def qc(tmp_path_factory, no_accounts) -> Client:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("discovery")
    with (stack_env("embedded-redis+sqlite", tmp) as env, LocalService(tmp, env, concurrency=1) as service,
          Client(service.url, service.create_key("discovery")) as client):
        yield client


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ACCOUNTS}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(("name", "meant"), [
    ("aer:fake_sherbroke", "fake_sherbrooke"),
    ("ibm:fake_torinno", "fake_torino"),
    ("exat", "exact"),
    ("braket:locl", "braket:local"),
    ("pennylane:default.qbit", "default.qubit"),
])
def test_a_misspelt_backend_names_the_closest_ones_not_every_one(name: str, meant: str) -> None:
    with pytest.raises(InputError) as err:
        get_backend(name)
    message = str(err.value)
    assert err.value.field == "backend" and "did you mean" in message and meant in message
    suggested = message.split("did you mean ", 1)[1].split("?", 1)[0].split(", ")
    assert meant in suggested and len(suggested) <= 3
    assert "fake_melbourne" not in message  # not the 68-name list it used to print


def test_cli_filters_by_provider_kind_and_text() -> None:
    done = cli("backends", "--provider", "aer", "--filter", "SHERB", "--json")
    assert done.returncode == 0, done.stderr
    assert [row["name"] for row in json.loads(done.stdout)] == ["aer:fake_sherbrooke"]
    done = cli("backends", "--kind", "analytic", "--json")
    assert done.returncode == 0, done.stderr
    assert {row["name"] for row in json.loads(done.stdout)} == {"exact"}


def test_cli_lists_hardware_without_an_account_with_the_setting_that_enables_it() -> None:
    done = cli("backends", "--kind", "qpu", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert len(rows) == 1 + BRAKET_QPUS and not any(row["configured"] for row in rows)
    settings = {row["name"]: row["enable_with"] for row in rows}
    assert settings["ibm:<backend>"] == "QKAN_IBM_TOKEN"
    assert all(s.startswith("QKAN_BRAKET_S3_BUCKET") for n, s in settings.items() if n.startswith("braket:"))
    assert all(row["price"]["source"] for row in rows)
    table = cli("backends", "--provider", "ibm", "--filter", "<backend>")
    assert table.returncode == 0 and "not configured: set QKAN_IBM_TOKEN" in table.stdout


def test_cli_unknown_filter_values_are_one_line_errors_with_suggestions() -> None:
    done = cli("backends", "--provider", "bracket")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "provider" in done.stderr and "did you mean braket" in done.stderr


def test_service_filters_and_answers_from_its_cache(qc: Client) -> None:
    everything = qc.backends()  # the first listing computes every backend's capabilities
    before = _listed.cache_info()  # the API runs in this process (LocalService's thread)
    again = qc.backends()
    after = _listed.cache_info()
    assert after.misses == before.misses and after.hits > before.hits  # answered from the listing it kept
    assert [b.name for b in again] == [b.name for b in everything]
    assert [b.name for b in qc.backends(provider="aer", filter="sherb")] == ["aer:fake_sherbrooke"]
    assert {b.name for b in qc.backends(kind="analytic")} == {"exact"}
    assert {b.name for b in qc.backends(filter="FAKE_TORINO")} == {"aer:fake_torino", "emulate:fake_torino",
                                                                   "ibm:fake_torino"}
    assert {b.name for b in qc.backends(provider="emulate", filter="torino")} == {"emulate:fake_torino"}


def test_service_lists_unconfigured_hardware_and_the_setting(qc: Client) -> None:
    rows = qc.backends(kind="qpu")
    assert len(rows) == 1 + BRAKET_QPUS
    assert all(not b.configured and not b.online and b.enable_with for b in rows)
    ibm = next(b for b in rows if b.name == "ibm:<backend>")
    assert ibm.enable_with == "QKAN_IBM_TOKEN" and "QKAN_IBM_TOKEN" in ibm.status_message
    assert ibm.price["per_second"] > 0
    assert all(b.configured and b.enable_with is None for b in qc.backends(provider="aer"))


@pytest.mark.parametrize(("params", "field", "meant"), [({"kind": "qpux"}, "kind", "qpu"),
                                                        ({"provider": "ibmq"}, "provider", "ibm")])
def test_service_unknown_filter_values_are_422_naming_the_field(qc: Client, params: dict, field: str,
                                                                 meant: str) -> None:
    with pytest.raises(ApiError) as err:
        qc.backends(**params)
    assert err.value.status == 422 and err.value.field == field and f"did you mean {meant}" in err.value.message


FIRST_USE_FROM_THREADS = """
import sys, threading
from qkan_orch.backends.registry import get_backend

names = sys.argv[1:]
errors, start = [], threading.Barrier(len(names))


def first_use(name):
    start.wait()
    try:
        get_backend(name).capabilities()
    except Exception as exc:
        errors.append(f"{name}: {type(exc).__name__}: {exc}")


threads = [threading.Thread(target=first_use, args=(name,)) for name in names]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(errors)
"""


def test_the_first_use_of_backends_from_several_threads_at_once_imports_each_sdk_whole() -> None:
    """The API's request threads may each ask for a qiskit backend first: without the registry's lock, qiskit's
    modules were seen half-initialised (ImportError: partially initialized module 'qiskit.passmanager') every
    time in a fresh interpreter."""
    names = ["aer", "aer:fake_melbourne", "emulate:fake_melbourne", "emulate:fake_sherbrooke", "ibm:fake_torino",
             "emulate:dm", "braket:local"]
    run = subprocess.run([sys.executable, "-c", FIRST_USE_FROM_THREADS, *names], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]", run.stdout
