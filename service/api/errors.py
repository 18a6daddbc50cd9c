"""Every error leaves the API as ``{"error": {"code", "message", "field"}}`` — a busy database and a bug too."""

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from qkan_orch.backends.accounts import redact
from qkan_orch.backends.base import TransientBackendError
from qkan_orch.models.errors import InputError

log = logging.getLogger("qkan.api")
DATABASE_RETRY_AFTER = "5"  # seconds: a pool wait or a database restart is usually over by then
BROKER_RETRY_AFTER = "5"  # seconds: a restarted Redis answers again within a few seconds

class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class HTTPProblem(Exception):
    """Raised by the service to answer with a status and the error body (the client's ``ApiError`` reads it)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers


def not_found(what: str, ident: str) -> HTTPProblem:
    return HTTPProblem(404, "not_found", f"no {what} '{ident}'", field=f"{what}_id")


def field_path(loc: Sequence[Any]) -> str | None:
    """A validation error's location as the request names it (``inputs.0.1``): without the union member pydantic
    adds when a field takes one of several shapes (``inputs.list[list[float]].0.1``)."""
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and "[" in p)) or None


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "field": field}}
    return JSONResponse(body, status_code=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type", 429: "too_many_requests",
               503: "unavailable"}

# Documented on every route so clients (and schemathesis) know the error shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": code.replace("_", " ")}
    for status, code in {401: "unauthorized", 404: "not_found", 422: "invalid_input"}.items()
}
ERROR_RESPONSES_SUBMIT: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    402: {"model": ErrorResponse, "description": "budget exceeded (the estimate is in the message)"},
    503: {"model": ErrorResponse, "description": "provider or queue unavailable"},
}


def install(app: FastAPI) -> None:
    @app.exception_handler(HTTPProblem)
    async def _api(_: Request, exc: HTTPProblem) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.field, exc.headers)

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return error_response(422, "invalid_input", exc.message, exc.field)

    @app.exception_handler(TransientBackendError)
    async def _provider(_: Request, exc: TransientBackendError) -> JSONResponse:
        return error_response(503, "provider_unavailable", redact(str(exc)), "backend", {"Retry-After": "30"})

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [p for p in first.get("loc", ()) if p not in ("body", "query", "path", "header", "form")]
        if first.get("type") == "json_invalid":
            return error_response(400, "malformed_json", f"request body is not valid JSON: {first.get('msg')}")
        return error_response(422, "invalid_input", str(first.get("msg")), field_path(loc))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(PoolTimeout)
    async def _pool(_: Request, exc: PoolTimeout) -> JSONResponse:
        log.warning("database connection pool exhausted: %s", exc)
        return error_response(503, "database_busy", "every database connection is in use; try again shortly",
                              headers={"Retry-After": DATABASE_RETRY_AFTER})

    @app.exception_handler(OperationalError)
    async def _database(_: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", redact(str(exc.orig)))
        return error_response(503, "database_unavailable", "the database cannot be reached or is locked; "
                              "try again shortly", headers={"Retry-After": DATABASE_RETRY_AFTER})

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        """Starlette re-raises after answering, so the traceback still reaches the server's log."""
        return error_response(500, "internal", f"internal error ({type(exc).__name__}) while serving "
                              f"{request.method} {request.url.path}; it is logged")
