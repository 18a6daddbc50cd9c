"""/v1/keys/{id}/revoke and /rotate: an admin key ends or replaces a key's token (``qkan-orch keys`` does the
same from the command line)."""

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel

from qkan_orch.service.api.deps import KeyDep, SessionDep, forget_key
from qkan_orch.service.api.errors import ERROR_RESPONSES, HTTPProblem, not_found
from qkan_orch.service.store.keys import KeyRevoked, revoke_key, rotate_key
from qkan_orch.service.store.tables import ApiKey

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses={
    **ERROR_RESPONSES, 403: {"description": "not an admin key"}, 409: {"description": "the key was revoked"}})


class KeyOut(BaseModel):
    id: int
    name: str
    prefix: str
    revoked_at: datetime | None


class RotatedKey(KeyOut):
    token: str  # shown once: only its hash is stored


def _admin(key: ApiKey) -> None:
    if not key.admin:
        raise HTTPProblem(403, "forbidden", "only an admin key may revoke or rotate keys")


@router.post("/{key_id}/revoke", response_model=KeyOut, summary="Revoke a key (admin keys only)")
def revoke(key_id: int, key: KeyDep, session: SessionDep) -> KeyOut:
    """Every request with the key is refused from now on: at once by this API process, by others within
    ``key_cache_seconds``. An admin may revoke any key, another admin's or its own."""
    _admin(key)
    revoked = revoke_key(session, key_id)
    if revoked is None:
        raise not_found("key", str(key_id))
    session.commit()  # before the cache forgets it, so a request after this answer cannot re-cache it unrevoked
    forget_key(key_id)
    return KeyOut(id=revoked.id, name=revoked.name, prefix=revoked.prefix, revoked_at=revoked.revoked_at)


@router.post("/{key_id}/rotate", response_model=RotatedKey, summary="Give a key a new token (admin keys only)")
def rotate(key_id: int, key: KeyDep, session: SessionDep) -> RotatedKey:
    """The same key (its jobs, models, budgets and limits) with a new token, returned once; the old token is
    refused at once by this API process, by others within ``key_cache_seconds``. 409 for a revoked key."""
    _admin(key)
    try:
        rotated = rotate_key(session, key_id)
    except KeyRevoked as exc:
        raise HTTPProblem(409, "conflict", str(exc)) from None
    if rotated is None:
        raise not_found("key", str(key_id))
    row, token = rotated
    session.commit()
    forget_key(key_id)
    return RotatedKey(id=row.id, name=row.name, prefix=row.prefix, revoked_at=row.revoked_at, token=token)
