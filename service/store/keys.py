"""API keys: random tokens shown once, stored only as SHA-256 hashes.

The tokens carry 256 bits of entropy, so a fast hash is enough: nobody can
guess a preimage, and lookups stay a single indexed query.
"""

import hashlib
import secrets
from datetime import UTC, datetime

from sqlalchemy import Table, delete, select
from sqlalchemy.orm import Session

from qkan_orch.service.store.tables import ApiKey, WebSession

PREFIX = "qk_"
KEYS: Table = ApiKey.__table__  # type: ignore[assignment]  # Core statements on hot paths use its columns


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def create_key(session: Session, name: str, max_shots: int | None = None, max_cost: float | None = None,
               admin: bool = False, rate_limit: float | None = None,
               max_active_jobs: int | None = None) -> tuple[ApiKey, str]:
    """A new key (with optional budgets and limits of its own) and its token; the token is returned once and never
    stored. An admin key's dashboard shows every key's jobs, and it may revoke and rotate keys through the API."""
    token = _new_token()
    key = ApiKey(name=name, prefix=token[:10], key_hash=hash_key(token), max_shots=max_shots, max_cost=max_cost,
                 admin=admin, rate_limit=rate_limit, max_active_jobs=max_active_jobs)
    session.add(key)
    session.flush()
    return key, token


def key_for_token(session: Session, token: str) -> ApiKey | None:
    """The key a token belongs to, revoked or not (the API tells a revoked key from an unknown one)."""
    if not token.startswith(PREFIX):
        return None
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token)))


def find_key(session: Session, token: str) -> ApiKey | None:
    """The key a token belongs to, unless it was revoked: what a sign-in accepts."""
    key = key_for_token(session, token)
    return key if key is not None and key.revoked_at is None else None


class KeyRevoked(Exception):
    """A revoked key cannot be rotated: its jobs stay readable by an admin, not by a new token."""


def revoke_key(session: Session, key_id: int) -> ApiKey | None:
    """Refuse the key from now on (None: no such key); its dashboard sessions end with it. Revoking twice keeps
    the first time."""
    key = session.get(ApiKey, key_id, with_for_update=True)
    if key is None:
        return None
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
    session.execute(delete(WebSession).where(WebSession.key_id == key_id))
    session.flush()
    return key


def rotate_key(session: Session, key_id: int) -> tuple[ApiKey, str] | None:
    """A new token for the same key (its jobs, models and limits), returned once; the old token stops working and
    the key's dashboard sessions end (None: no such key; ``KeyRevoked`` for a revoked one)."""
    key = session.get(ApiKey, key_id, with_for_update=True)
    if key is None:
        return None
    if key.revoked_at is not None:
        raise KeyRevoked(f"key {key_id} was revoked")
    token = _new_token()
    key.prefix, key.key_hash = token[:10], hash_key(token)
    session.execute(delete(WebSession).where(WebSession.key_id == key_id))
    session.flush()
    return key, token


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))
