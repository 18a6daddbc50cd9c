"""Limits per API key (requests per second, active jobs) and per client address (failed authentications).

The request rate is a token bucket per key in Redis, the broker every API
process already reaches, so the limit holds across API processes. It is one
Lua script (refill by elapsed time, take a token, or say how long until one is
there): Redis runs a script atomically, so concurrent requests cannot both
take the last token, and unlike fixed INCR+EXPIRE windows a bucket lets no
double burst through at a window's edge. The bucket holds two seconds' worth
(bursts of twice the rate). Failed authentications are a one-minute window
per address (SET NX EX, then INCR, in one transaction: the counter always
expires). If Redis does not answer, requests are not refused for that: the
limits fail open for a few seconds at a time, logged once per outage, so
status and cancel keep working while the broker is away.

Active jobs are counted in the database, with the key's row locked, in the
transaction that inserts the new jobs: two concurrent submissions cannot both
take the last place.
"""

import logging
import math
import threading
import time

import redis
import redis.asyncio
from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from qkan_orch.service.api.errors import HTTPProblem
from qkan_orch.service.settings import Settings
from qkan_orch.service.store.jobs import JOBS
from qkan_orch.service.store.keys import KEYS
from qkan_orch.service.store.states import ACTIVE
from qkan_orch.service.store.tables import ApiKey

log = logging.getLogger("qkan.api")
BURST_SECONDS = 2.0  # a bucket holds this many seconds' worth of requests
AUTH_WINDOW = 60  # seconds: failed authentications are counted per address and minute
_OFFLINE_SECONDS = 5.0  # after Redis failed to answer, limits are skipped this long before it is asked again
_TIMEOUT = 0.25  # seconds a limit may wait for Redis
ACTIVE_JOBS_RETRY_AFTER = 5  # seconds: jobs end at their own pace, so this is a polite guess, not a promise

# KEYS[1]: the bucket; ARGV: rate (tokens/s), capacity. Returns 0 (allowed) or the ms until a token is there.
_BUCKET = """
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]), tonumber(state[2])
if tokens == nil then tokens, at = capacity, now end
tokens = math.min(capacity, tokens + (now - at) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity * 1000 / rate) + 1000)
return wait
"""


class _Outage:
    """Whether Redis answered lately: after a failure the limits are skipped for a while, logged once per outage."""

    def __init__(self) -> None:
        self.offline_until = 0.0
        self.logged = False

    def available(self) -> bool:
        return time.monotonic() >= self.offline_until

    def failed(self, exc: redis.RedisError) -> None:
        self.offline_until = time.monotonic() + _OFFLINE_SECONDS
        if not self.logged:
            self.logged = True
            log.warning("rate limits are off while Redis does not answer (%s)", type(exc).__name__)

    def answered(self) -> None:
        if self.logged:
            self.logged = False
            log.info("Redis answers again: rate limits are back")


class _Redis(_Outage):
    """One client per Redis URL and process, with short timeouts, for the failed-authentication windows (a
    request thread's)."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(url, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT)


_clients: dict[str, _Redis] = {}
_clients_lock = threading.Lock()


def _redis(settings: Settings) -> _Redis | None:
    if not settings.redis_url:
        return None
    with _clients_lock:
        if settings.redis_url not in _clients:
            _clients[settings.redis_url] = _Redis(settings.redis_url)
        return _clients[settings.redis_url]


def _too_many(code: str, message: str, retry_after: float) -> HTTPProblem:
    return HTTPProblem(429, code, message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class RequestRates(_Outage):
    """The keys' request buckets, asked from the API's event loop with an asyncio client: every authenticated
    request takes a token, and a thread hop for it cost more CPU than the request's own work when the key is
    cached (bench/results/service_load.md). One per app (``create_app``), used on that app's loop only."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.client = (redis.asyncio.Redis.from_url(settings.redis_url, socket_timeout=_TIMEOUT,
                                                    socket_connect_timeout=_TIMEOUT)
                       if settings.redis_url else None)
        self.bucket = self.client.register_script(_BUCKET) if self.client is not None else None

    async def take(self, key: ApiKey) -> None:
        """Take one request from the key's bucket; 429 ``rate_limited`` with Retry-After if it is empty."""
        rate = key.rate_limit if key.rate_limit is not None else self.settings.rate_limit_per_second
        if self.bucket is None or not self.available():
            return
        try:
            wait_ms = int(await self.bucket(keys=[f"qkan:rate:{key.id}"], args=[rate, rate * BURST_SECONDS]))
        except redis.RedisError as exc:
            self.failed(exc)
            return
        self.answered()
        if wait_ms > 0:
            raise _too_many("rate_limited", f"this API key may make {rate:g} requests per second "
                            f"(bursts of {rate * BURST_SECONDS:g}); try again in a moment", wait_ms / 1000)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def check_auth_failures(settings: Settings, address: str) -> None:
    """429 if the address has failed to authenticate ``auth_failures_per_minute`` times in this minute."""
    store = _redis(settings)
    if store is None or not store.available():
        return
    name = f"qkan:authfail:{address}"
    try:
        failures, ttl = store.client.pipeline().get(name).ttl(name).execute()
    except redis.RedisError as exc:
        store.failed(exc)
        return
    if failures is not None and int(failures) >= settings.auth_failures_per_minute:
        raise _too_many("too_many_auth_failures", f"{settings.auth_failures_per_minute} failed authentications "
                        "per minute from this address; try again later", ttl if ttl > 0 else AUTH_WINDOW)


def record_auth_failure(settings: Settings, address: str) -> None:
    """Count a failed authentication against the address for this minute."""
    store = _redis(settings)
    if store is None or not store.available():
        return
    name = f"qkan:authfail:{address}"
    try:
        store.client.pipeline().set(name, 0, ex=AUTH_WINDOW, nx=True).incr(name).execute()
    except redis.RedisError as exc:
        store.failed(exc)


# Built once, not per call (as the worker's claim): 0.3-0.4 ms less CPU a submission (bench/results/service_load.md).
# Two statements, not one with a locking subquery: under READ COMMITTED the count must see the jobs a submission
# that held the lock before us committed, so it needs a snapshot taken after the lock.
_LOCK_KEY = select(KEYS.c.id).where(KEYS.c.id == bindparam("key_id")).with_for_update()
_COUNT_ACTIVE = select(func.count()).select_from(JOBS).where(JOBS.c.owner_id == bindparam("key_id"),
                                                             JOBS.c.state.in_(ACTIVE))


def check_active_jobs(session: Session, settings: Settings, key: ApiKey, adding: int) -> None:
    """429 ``too_many_active_jobs`` if ``adding`` more jobs would take the key over its active-jobs limit. Holds
    the key's row lock until the transaction ends, so call it in the transaction that inserts the jobs."""
    limit = key.max_active_jobs if key.max_active_jobs is not None else settings.max_active_jobs_per_key
    connection = session.connection()  # Core on the session's connection: 0.4 ms less CPU than the ORM
    connection.execute(_LOCK_KEY, {"key_id": key.id})
    active = connection.execute(_COUNT_ACTIVE, {"key_id": key.id}).scalar_one()
    if active + adding > limit:
        raise _too_many("too_many_active_jobs",
                        f"this API key may have {limit} jobs queued or running at once; it has {active} "
                        f"and this submission adds {adding}: wait for some to finish", ACTIVE_JOBS_RETRY_AFTER)
