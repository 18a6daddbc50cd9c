"""The installed ``qkan-orch`` command run as a user runs it: a fresh process with only the given QKAN_* settings."""

import os
import subprocess
import sys
from pathlib import Path

CLI = str(Path(sys.executable).parent / "qkan-orch")


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """The installed command with only ``env``'s QKAN_* settings (none of this process's)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("QKAN_")}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env={**clean, **env}, cwd=cwd, timeout=120)
