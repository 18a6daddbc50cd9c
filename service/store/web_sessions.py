"""Dashboard sign-ins: a random session token per browser, stored hashed, with its CSRF token and expiry.

The browser never holds the API key: the sign-in form sends it once, and from
then on an httpOnly cookie carries the session token. Signing out deletes the
row, so a copied cookie stops working at once.
"""

import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from qkan_orch.service.store.keys import hash_key
from qkan_orch.service.store.tables import ApiKey, WebSession

LIFETIME = timedelta(hours=12)


def open_session(session: Session, key: ApiKey) -> str:
    """A new sign-in for ``key``; returns the token for the cookie (stored only as its hash). Expired sign-ins
    are removed here, so the table holds only live ones."""
    now = datetime.now(UTC)
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    token = secrets.token_urlsafe(32)
    session.add(WebSession(token_hash=hash_key(token), key_id=key.id, csrf=secrets.token_urlsafe(24),
                           created_at=now, expires_at=now + LIFETIME))
    session.flush()
    return token


def find_session(session: Session, token: str) -> tuple[ApiKey, WebSession] | None:
    """The key and sign-in a cookie's token stands for, if it is live."""
    row = session.execute(
        select(ApiKey, WebSession).join(WebSession, WebSession.key_id == ApiKey.id)
        .where(WebSession.token_hash == hash_key(token), WebSession.expires_at > datetime.now(UTC))
    ).first()
    return (row[0], row[1]) if row else None


def close_session(session: Session, token: str) -> None:
    session.execute(delete(WebSession).where(WebSession.token_hash == hash_key(token)))
