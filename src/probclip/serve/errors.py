"""How the service answers errors: one table from exception type to status code and a one-line JSON message.

Every answer other than 200 is ``{"detail": "<one line>"}``, scrubbed of server paths and object reprs
(``metadata.scrub_detail``). ``ERROR_TABLE`` is the one place that maps an exception to its status; an exception
it does not name becomes a one-line 500 in ``middleware.InternalErrorMiddleware`` (which keeps the connection
alive, unlike Starlette's last-resort handler).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InputError, UsageError
from ..search.collection_head import HeadFileError
from ..search.layout import ShardFileError
from .limits import ImageTooLargeError
from .metadata import scrub_detail
from .middleware import RequestTooLargeError

__all__ = ["ERROR_TABLE", "ErrorRule", "ServiceError", "add_error_handlers", "error_response", "first_line",
           "validation_message"]


class ServiceError(Exception):
    """An answer other than 200 with a one-line message (unknown index, out-of-range id, ...)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type's name when the message is empty)."""
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def validation_message(err: ValidationError | RequestValidationError) -> str:
    """A pydantic / FastAPI validation error as one line: ``invalid search request: field: problem; ...`` (a
    message that already starts with its field's name, such as a ``SearchOptions`` check's, is given as it is)."""
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        msg = e.get("msg", "invalid")
        parts.append(msg if msg.startswith(f"{where} ") else f"{where}: {msg}")
    return "invalid search request: " + "; ".join(parts)


def error_response(status: int, detail: str) -> JSONResponse:
    """The JSON answer ``{"detail": detail}`` (one line, no server path or repr) with ``status``."""
    return JSONResponse({"detail": scrub_detail(detail)}, status_code=status)


@dataclass(frozen=True)
class ErrorRule:
    """Exceptions of type ``error`` are answered ``answer(err) -> (status, detail)``."""

    error: type[Exception]
    answer: Callable[[Exception], tuple[int, str]]


#: The exception types the service answers, with their status codes; anything else is a 500.
ERROR_TABLE: tuple[ErrorRule, ...] = (
    ErrorRule(ServiceError, lambda err: (err.status, err.detail)),
    ErrorRule(ImageTooLargeError, lambda err: (413, first_line(err))),
    ErrorRule(RequestTooLargeError, lambda err: (413, first_line(err))),
    ErrorRule(UsageError, lambda err: (400, first_line(err))),
    ErrorRule(ShardFileError, lambda err: (503, f"the collection on disk is damaged: {first_line(err)}")),
    ErrorRule(HeadFileError, lambda err: (503, f"the collection on disk is damaged: {first_line(err)}")),
    ErrorRule(InputError, lambda err: (400, first_line(err))),
    ErrorRule(RequestValidationError, lambda err: (422, validation_message(err))),
    ErrorRule(StarletteHTTPException, lambda err: (err.status_code, str(err.detail))),
)


def add_error_handlers(app: FastAPI, table: tuple[ErrorRule, ...] = ERROR_TABLE) -> None:
    """Register one exception handler per row of ``table`` on ``app``."""
    for rule in table:
        async def handle(request: Request, err: Exception, answer=rule.answer) -> JSONResponse:
            return error_response(*answer(err))

        app.add_exception_handler(rule.error, handle)
