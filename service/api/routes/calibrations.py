"""/v1/calibrations: device calibrations jobs ran under, each usable as ``emulate:calibration:<id>``.

Device data, not a key's: any valid key lists, reads and uploads them. The document's schema is
``backends.calibration_snapshot`` (version 1); an upload that fails it is 422 naming the field
(``document.qubits[0].t1``).
"""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from qkan_orch.backends.calibration_snapshot import CalibrationDocument
from qkan_orch.service.api.deps import KeyDep, OffsetQuery, SessionDep
from qkan_orch.service.api.errors import ERROR_RESPONSES, not_found
from qkan_orch.service.api.schemas import Page
from qkan_orch.service.store import calibrations as store
from qkan_orch.service.store.tables import CalibrationSnapshot

router = APIRouter(prefix="/v1/calibrations", tags=["calibrations"], responses=ERROR_RESPONSES)


class CalibrationSummary(BaseModel):
    id: str
    backend: str
    calibrated_at: datetime
    version: int
    qubits: int
    created_at: datetime
    emulator: str = Field(description="The backend name that runs with this calibration's noise")


class CalibrationOut(CalibrationSummary):
    document: dict[str, Any] = Field(description="The versioned calibration document")


class CalibrationPage(Page):
    items: list[CalibrationSummary]


class CalibrationUpload(BaseModel):
    document: dict[str, Any] = Field(description="A version-1 calibration document (backends.calibration_snapshot)")


def _summary(row: CalibrationSnapshot) -> dict[str, Any]:
    return {"id": row.id, "backend": row.backend, "calibrated_at": row.calibrated_at, "version": row.version,
            "qubits": len(row.document.get("qubits", [])), "created_at": row.created_at,
            "emulator": f"emulate:calibration:{row.id}"}


@router.get("", response_model=CalibrationPage, summary="Stored calibrations, newest calibration first")
def list_calibrations(key: KeyDep, session: SessionDep, backend: Annotated[str | None, Query(max_length=200)] = None,
                      limit: Annotated[int, Query(ge=1, le=100)] = 20, offset: OffsetQuery = 0) -> CalibrationPage:
    total, rows = store.page(session, backend, limit, offset)
    return CalibrationPage(total=total, limit=limit, offset=offset,
                           items=[CalibrationSummary(**_summary(r)) for r in rows])


@router.get("/{calibration_id}", response_model=CalibrationOut, summary="A calibration and its document")
def get_calibration(calibration_id: str, key: KeyDep, session: SessionDep) -> CalibrationOut:
    row = store.get(session, calibration_id)
    if row is None:
        raise not_found("calibration", calibration_id)
    return CalibrationOut(**_summary(row), document=row.document)


@router.post("", status_code=201, response_model=CalibrationOut,
             summary="Upload a calibration document (200 with the stored one if that calibration exists)")
def upload(body: CalibrationUpload, response: Response, key: KeyDep, session: SessionDep) -> CalibrationOut:
    document = CalibrationDocument.from_json(body.document, "document")
    calibration_id, created = store.store(session, document)
    if not created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/calibrations/{calibration_id}"
    row = store.get(session, calibration_id)
    assert row is not None
    return CalibrationOut(**_summary(row), document=row.document)
