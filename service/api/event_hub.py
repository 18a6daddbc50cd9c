"""One poller for every open event stream of this API process, and the per-key cap on open streams.

A stream holds no database connection while it waits: it subscribes with its
cursor (the id of the last event it sent), and every ``POLL_SECONDS`` the hub
reads all watched jobs' states and new events in one short session
(``store.progress``) and hands each stream what is new to it — a tick costs
the same few statements whether one client watches or two hundred do.

A state change reaches the stream when the job row has it, not only once a
worker writes its event: ``running`` is sent as soon as a worker claims the
job, though the worker's own ``running`` event waits for the first round to
be written (that event is then not sent again).
"""

import asyncio
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
from sqlalchemy.exc import SQLAlchemyError
from sse_starlette.sse import EventSourceResponse
from starlette.types import Receive, Scope, Send

from qkan_orch.service.api.errors import HTTPProblem
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.progress import JobProgress, read_progress
from qkan_orch.service.store.states import ACTIVE, TERMINAL, JobState

log = logging.getLogger("qkan.api")
POLL_SECONDS = 0.25
RETRY_SECONDS = 2.0  # after a failed read (database away, pool exhausted): streams stay open, pinging
STREAM_RETRY_AFTER = "5"  # seconds a client over the cap is told to wait


@dataclass(frozen=True)
class StreamBatch:
    """Server-sent events (``id`` when the event is a stored row, ``event``, ``data``); ``ended``: send no more."""

    events: list[dict[str, str]]
    ended: bool


class Subscription:
    """One open stream: where it is in its job's events, what state it last told, what waits to be sent."""

    def __init__(self, job_id: str, last: int, reported: JobState | None) -> None:
        self.job_id, self.last, self.reported = job_id, last, reported
        self.inbox: asyncio.Queue[StreamBatch] = asyncio.Queue()

    def take(self, progress: JobProgress) -> StreamBatch | None:
        """What of ``progress`` this stream has not sent yet; None if nothing."""
        events: list[dict[str, str]] = []
        state = progress.state
        if state in ACTIVE and state != self.reported:
            events.append(self._state_event(state))
        for row in progress.events:
            if row.id <= self.last:
                continue
            self.last = row.id
            if row.kind == "state":
                if row.data.get("state") == self.reported:  # already sent when the row's state changed
                    continue
                self.reported = JobState(row.data["state"])
            events.append({"id": str(row.id), "event": row.kind,
                           "data": json.dumps({"at": row.at.isoformat(), **row.data})})
        ended = state is None or (state in TERMINAL and progress.complete)
        if ended and state is not None and state != self.reported:
            events.append(self._state_event(state))
        return StreamBatch(events, ended) if events or ended else None

    def _state_event(self, state: JobState) -> dict[str, str]:
        self.reported = state
        return {"event": "state", "data": json.dumps({"at": datetime.now(UTC).isoformat(), "state": state})}


class EventHub:
    """The streams of one API process: their subscriptions, the one poller serving them, open streams per key."""

    def __init__(self, database_url: str, streams_per_key: int) -> None:
        self.database_url, self.streams_per_key = database_url, streams_per_key
        self._watching: dict[str, set[Subscription]] = defaultdict(set)
        self._open: Counter[int] = Counter()
        self._poller: asyncio.Task[None] | None = None

    def reserve(self, key_id: int) -> Callable[[], None]:
        """Count one more open stream for the key, or refuse (429); returns the way to give it back (once)."""
        if self._open[key_id] >= self.streams_per_key:
            raise HTTPProblem(
                429, "too_many_streams",
                f"this API key already has {self.streams_per_key} open event streams (QKAN_MAX_STREAMS_PER_KEY); "
                "close one, or poll GET /v1/jobs/{id}", headers={"Retry-After": STREAM_RETRY_AFTER})
        self._open[key_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._open[key_id] -= 1
                if not self._open[key_id]:
                    del self._open[key_id]

        return release

    def subscribe(self, job_id: str, last: int, reported: JobState | None) -> Subscription:
        subscription = Subscription(job_id, last, reported)
        self._watching[job_id].add(subscription)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        watchers = self._watching.get(subscription.job_id)
        if watchers is not None:
            watchers.discard(subscription)
            if not watchers:
                del self._watching[subscription.job_id]

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except asyncio.CancelledError:
                pass

    async def _poll(self) -> None:
        """Read and hand out until nobody watches. A bug ends the open streams (clients reconnect with
        Last-Event-ID) rather than leaving them silent."""
        try:
            await self._serve()
        except Exception:
            log.exception("event streams: the poller failed; ending the open streams")
            for watchers in self._watching.values():
                for subscription in watchers:
                    subscription.inbox.put_nowait(StreamBatch([], ended=True))

    async def _serve(self) -> None:
        """A subscriber who joined during a read is served from the next one."""
        while self._watching:
            served = {job_id: list(watchers) for job_id, watchers in self._watching.items()}
            cursors = {job_id: min(s.last for s in watchers) for job_id, watchers in served.items()}
            try:
                progress = await anyio.to_thread.run_sync(self._read, cursors)
            except SQLAlchemyError as exc:  # the database is away or busy: keep the streams, try again
                log.warning("event streams: reading progress failed (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            for job_id, watchers in served.items():
                for subscription in watchers:
                    if subscription in self._watching.get(job_id, ()):
                        batch = subscription.take(progress[job_id])
                        if batch is not None:
                            subscription.inbox.put_nowait(batch)
            await asyncio.sleep(POLL_SECONDS)

    def _read(self, cursors: dict[str, int]) -> dict[str, JobProgress]:
        with session_scope(self.database_url) as session:
            return read_progress(session, cursors)


class SlotStream(EventSourceResponse):
    """An event stream that gives its key's slot back when it ends, however it ends (even before it starts)."""

    def __init__(self, *args: object, release: Callable[[], None], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()
