"""``qkan-orch backends`` from a file after the first call: listing imports every SDK (3–9 s), and what it finds
changes only when the installed packages, our backend code or the backend settings do.

The file's name is a digest of those (every installed distribution's version, the newest mtime under
``qkan_orch/backends``, ``QKAN_BACKEND_PLUGINS``), so an upgrade or a plugin starts a new listing. With a
provider account set, the account's devices are asked for every time (they change, and asking needs the
network anyway): such listings are not cached.
"""

import hashlib
import json
import os
from importlib.metadata import distributions
from pathlib import Path
from typing import Any, TypedDict

from qkan_orch.backends.names import check_filters, name_matches

ACCOUNTS = ("QKAN_IBM_TOKEN", "QKAN_BRAKET_S3_BUCKET")  # set: the listing asks a provider, never cached


class BackendRow(TypedDict):
    """``backends.base.Capabilities`` as JSON (that module imports torch), and whether its account is set up."""

    name: str
    kind: str
    qubits: int
    noise: str
    max_shots: int | None
    max_circuits: int | None
    native_gates: list[str]
    default_pack: int
    max_pack: int
    options: list[str]
    price: dict[str, Any]
    exact_probabilities: bool
    configured: bool
    enable_with: str | None


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qkan-orch"


def listing_key() -> str:
    """Digest of what the listing depends on."""
    backends = Path(__file__).resolve().parents[1] / "backends"
    versions = sorted(f"{d.metadata['Name']}=={d.version}" for d in distributions())
    newest = max(p.stat().st_mtime_ns for p in backends.glob("*.py"))
    basis = [*versions, str(newest), os.environ.get("QKAN_BACKEND_PLUGINS", "")]
    return hashlib.sha256("\n".join(basis).encode()).hexdigest()[:16]


def backend_rows(kind: str | None, provider: str | None, text: str | None) -> list[BackendRow]:
    """Every backend (capabilities, ``configured``, ``enable_with``) passing the filters, as ``--json`` prints it."""
    check_filters(kind, provider)
    if any(os.environ.get(name) for name in ACCOUNTS):
        rows = _listed(kind, provider, text)
    else:
        path = cache_dir() / f"backends-{listing_key()}.json"
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError):
            rows = _listed(None, None, None)
            _write(path, rows)
    return [r for r in rows if name_matches(r["name"], provider, text) and kind in (None, r["kind"])]


def _listed(kind: str | None, provider: str | None, text: str | None) -> list[BackendRow]:
    from dataclasses import asdict

    from qkan_orch.backends.registry import list_backends, unconfigured_hardware

    listed = [(c, None) for c in list_backends(kind, provider, text)]
    listed += [(h.capabilities, h.setting) for h in unconfigured_hardware()]
    return [BackendRow(**json.loads(json.dumps(asdict(c))), configured=setting is None, enable_with=setting)
            for c, setting in listed]


def _write(path: Path, rows: list[BackendRow]) -> None:
    """Written whole or not at all: a concurrent reader sees the old file or the new one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(rows))
        partial.replace(path)
    except OSError:
        pass  # an unwritable cache only costs the next call its speed
