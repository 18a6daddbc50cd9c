"""API keys: random tokens shown once, stored only as SHA-256 hashes.

The tokens carry 256 bits of entropy, so a fast hash is enough: nobody can
guess a preimage, and lookups stay a single indexed query.
"""

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from qkan_orch.service.store.tables import ApiKey

PREFIX = "qk_"


def hash_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_key(session: Session, name: str, max_shots: int | None = None,
               max_cost: float | None = None, admin: bool = False) -> tuple[ApiKey, str]:
    """A new key (with optional budgets) and its token; the token is returned once and never stored. An admin
    key's dashboard shows every key's jobs; through the API it is a key like any other."""
    token = PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(name=name, prefix=token[:10], key_hash=hash_key(token), max_shots=max_shots, max_cost=max_cost,
                 admin=admin)
    session.add(key)
    session.flush()
    return key, token


def find_key(session: Session, token: str) -> ApiKey | None:
    if not token.startswith(PREFIX):
        return None
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token)))


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))
