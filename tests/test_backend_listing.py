"""``qkan-orch backends`` after the first call: answered from a cache file, without importing any SDK.

Fresh processes through the CLI's entry point (``test_cli_startup.run_cli`` records what they imported), each
with its own XDG_CACHE_HOME. Timings are in bench/cli_startup.py, not here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_startup import HEAVY, WRAPPER

from qkan_orch.cli.backend_listing import listing_key


def env_with(cache: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QKAN_")}
    return {**clean, "XDG_CACHE_HOME": str(cache), **extra}


def listed(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[list[dict], set[str]]:
    """The rows ``backends --json`` printed and the top-level packages its process imported."""
    record = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(record), "backends", "--json", *args],
                          capture_output=True, text=True, timeout=300, env=env)
    assert json.loads(record.read_text())["code"] in (0, None), proc.stderr
    return json.loads(proc.stdout), set(json.loads(record.read_text())["modules"])


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], set[str]]:
    """A cache folder after one listing, the rows it printed and what its process imported."""
    tmp = tmp_path_factory.mktemp("listing")
    rows, imported = listed(tmp, env_with(tmp / "cache"))
    return tmp, rows, imported


def test_the_second_listing_comes_from_the_cache_and_imports_no_sdk(first: tuple[Path, list[dict], set[str]]
                                                                     ) -> None:
    tmp, rows, imported = first
    env = env_with(tmp / "cache")
    assert imported & HEAVY  # the first listing asks every SDK
    assert len(list((tmp / "cache" / "qkan-orch").glob("backends-*.json"))) == 1
    again, imported = listed(tmp, env)
    assert again == rows and not imported & HEAVY
    names = {row["name"] for row in rows}
    assert {"exact", "aer", "braket:local", "ibm:fake_torino"} <= names
    garnet = next(r for r in rows if r["name"].endswith("iqm/Garnet"))
    assert not garnet["configured"] and garnet["qubits"] == 20 and garnet["enable_with"].startswith("QKAN_BRAKET")
    # filters apply to the cached rows as they do to a fresh listing
    fakes, _ = listed(tmp, env, "--provider", "aer", "--filter", "SHERB")
    assert [r["name"] for r in fakes] == ["aer:fake_sherbrooke"]
    analytic, _ = listed(tmp, env, "--kind", "analytic")
    assert [r["name"] for r in analytic] == [r["name"] for r in rows if r["kind"] == "analytic"] != []


def test_a_damaged_cache_file_is_listed_again(first: tuple[Path, list[dict], set[str]]) -> None:
    tmp, rows, _ = first
    (only,) = (tmp / "cache" / "qkan-orch").glob("backends-*.json")
    only.write_text("{not json")
    again, imported = listed(tmp, env_with(tmp / "cache"))
    assert again == rows and imported & HEAVY and json.loads(only.read_text()) == rows


def test_the_cache_key_follows_the_plugin_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QKAN_BACKEND_PLUGINS", raising=False)
    plain = listing_key()
    monkeypatch.setenv("QKAN_BACKEND_PLUGINS", "support.plugin_backends")
    assert listing_key() != plain
