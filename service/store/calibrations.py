"""Calibration snapshots: one row per (backend, calibration time), never changed once written.

Invariants: a row's ``document`` passed ``CalibrationDocument.from_json`` before it was written, and its
``backend`` and ``calibrated_at`` (in UTC) are the document's; the unique key (backend, calibrated_at) makes
storing idempotent — ``store`` is one INSERT … ON CONFLICT DO NOTHING (PostgreSQL and SQLite alike), so two
workers placing rounds under the same calibration at once store it once and both learn its id. Rows are device
data, not a key's: no owner. Functions take the caller's session and leave committing to it.
"""

import uuid
from datetime import UTC

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from qkan_orch.backends.calibration_snapshot import CalibrationDocument, Resolver
from qkan_orch.service.store.database import session_scope
from qkan_orch.service.store.tables import CalibrationSnapshot


def store(session: Session, document: CalibrationDocument) -> tuple[str, bool]:
    """The id of ``document``'s row and whether this call created it (False: that calibration was stored)."""
    when = document.calibrated_at.astimezone(UTC)
    values = {"id": str(uuid.uuid4()), "backend": document.backend, "calibrated_at": when,
              "version": document.version, "document": document.to_json()}
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    created = session.scalar(
        dialect.insert(CalibrationSnapshot).values(**values)
        .on_conflict_do_nothing(index_elements=["backend", "calibrated_at"])
        .returning(CalibrationSnapshot.id)
    )
    if created is not None:
        return created, True
    existing = session.scalar(select(CalibrationSnapshot.id).where(
        CalibrationSnapshot.backend == document.backend, CalibrationSnapshot.calibrated_at == when))
    assert existing is not None, "the conflicting row is committed: the unique key saw it"
    return existing, False


def get(session: Session, snapshot_id: str) -> CalibrationSnapshot | None:
    return session.get(CalibrationSnapshot, snapshot_id)


def page(session: Session, backend: str | None, limit: int, offset: int) -> tuple[int, list[CalibrationSnapshot]]:
    """(total, rows) of the snapshots of ``backend`` (every backend if None), newest calibration first."""
    where = [CalibrationSnapshot.backend == backend] if backend is not None else []
    total = session.scalar(select(func.count()).select_from(CalibrationSnapshot).where(*where)) or 0
    rows = session.scalars(select(CalibrationSnapshot).where(*where)
                           .order_by(CalibrationSnapshot.calibrated_at.desc(), CalibrationSnapshot.id)
                           .limit(limit).offset(offset)).all()
    return total, list(rows)


def resolver(url: str) -> Resolver:
    """What ``calibration_snapshot.install_resolver`` takes: a stored document by id, from the database at
    ``url`` (a short session of its own, so it never joins a caller's transaction)."""

    def document(snapshot_id: str) -> dict | None:
        with session_scope(url) as session:
            row = get(session, snapshot_id)
            return None if row is None else dict(row.document)

    return document
