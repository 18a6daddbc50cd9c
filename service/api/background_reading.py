"""A slow reading kept fresh off the request path: the dashboard's view of workers and of providers.

Some questions take seconds to answer — a Celery ``inspect`` broadcast waits
its whole timeout, a first backend listing imports every SDK — while a page
refreshes every 1.5 s. A ``BackgroundReading`` answers from its last result
and, when that is older than ``max_age``, starts one refresh on a thread of
its own; a failed refresh keeps the last result and is tried again on the
next request.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("qkan.api")


class BackgroundReading(Generic[T]):
    def __init__(self, read: Callable[[], T], max_age: float) -> None:
        self.read, self.max_age = read, max_age
        self._value: T | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()
        self._refreshing = False

    def snapshot(self) -> tuple[T | None, float | None]:
        """The last result (None before the first one) and its age in seconds; starts a refresh when stale."""
        with self._lock:
            value, read_at = self._value, self._read_at
            if not self._refreshing and time.monotonic() - read_at > self.max_age:
                self._refreshing = True
                threading.Thread(target=self._refresh, name="background-reading", daemon=True).start()
        return value, (time.monotonic() - read_at if value is not None else None)

    def _refresh(self) -> None:
        try:
            value: T | None = self.read()
        except Exception as exc:  # broker or provider away: keep the last result
            log.warning("background reading failed: %s", type(exc).__name__)
            value = None
        with self._lock:
            if value is not None:
                self._value, self._read_at = value, time.monotonic()
            self._refreshing = False
