"""One import root: what ``pip install`` puts into site-packages is ``qkan_orch`` and nothing else.

The folders stay at the top of the repository and are mapped under ``qkan_orch`` by pyproject's
``package-dir``; a generic top-level name (``models``, ``client``, …) would collide with other
distributions and be shadowed by a user's own folders.
"""

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_listed_under_the_qkan_orch_root() -> None:
    folders = {
        "qkan_orch." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in PYPROJECT["package-dir"].values()
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert set(PYPROJECT["packages"]) == folders
    assert all(name.startswith("qkan_orch.") for name in PYPROJECT["package-dir"])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """Built from a copy of the source, so the build leaves nothing in the checkout."""
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("src") / "qkan"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "bench"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (path,) = out.glob("qkan_orchestrator-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_one_top_level_package(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"qkan_orch"}
    (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["qkan_orch"]
    assert "qkan_orch/service/store/migrations/versions/0001_initial_schema.py" in names
    assert "qkan_orch/service/store/migrations/script.py.mako" in names
    entry_points = wheel.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "qkan-orch = qkan_orch.cli.main:run" in entry_points


def test_generic_names_are_not_importable_outside_the_repository(tmp_path: Path) -> None:
    probe = (
        "import importlib.util as u, qkan_orch.models, qkan_orch.client;"
        "print([n for n in ('models','client','cli','service','workers','backends','circuits') if u.find_spec(n)])"
    )
    found = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "[]"
