"""The data folder of one local service: private (0700), and locked while a service runs on it.

Two services on one folder would run two Redis servers appending to one AOF
file and two sets of workers on one SQLite file. ``claim`` takes an
exclusive ``flock`` on ``serve.lock`` in the folder instead, which the kernel
drops when the holder ends, however it ends; the file names the holder's pid
for the error the next one prints.
"""

import fcntl
import logging
import os
from pathlib import Path
from typing import TextIO

log = logging.getLogger("qkan.serve")
LOCK_FILE = "serve.lock"


class FolderInUse(RuntimeError):
    """Another service holds the folder's lock."""


def claim(folder: Path) -> TextIO:
    """Create ``folder`` 0700 (or make it so), lock it, and return the open lock file: closing it lets go."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.stat().st_mode & 0o077:
        folder.chmod(0o700)
        log.warning("data folder %s was open to other users; it is now 0700", folder)
    handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")  # held until the service stops
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise FolderInUse(f"{folder.resolve()} is in use by another qkan-orch serve (pid {holder})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
