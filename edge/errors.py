"""Errors a user can cause, each carrying its HTTP status, a stable code and the field.

The admin API renders every one of these through one function into
`{"error": {"code", "message", "field"}}`; the CLI prints the message and exits non-zero.
"""

from __future__ import annotations


class LinkedgeError(Exception):
    status = 400
    code = "invalid_request"
    # extra response headers (e.g. Allow, WWW-Authenticate) and per-item errors (bulk)
    headers: tuple[tuple[str, str], ...] = ()
    items: list[dict[str, object]] | None = None

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidField(LinkedgeError):
    code = "invalid_field"


class InvalidURL(LinkedgeError):
    status = 422
    code = "invalid_url"


class NotFound(LinkedgeError):
    status = 404
    code = "not_found"


class Conflict(LinkedgeError):
    status = 409
    code = "conflict"
