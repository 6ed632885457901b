"""The admin API's error answers: the exceptions routes raise, and the JSON body they become.

Every error is ``{"error": "...", "fields": [...]}`` (:class:`pmlb.admin.schemas.Error`);
:func:`pmlb.admin.app.create_app` maps each exception here to its status.
"""

from __future__ import annotations

import json

from quart import Response

from pmlb.admin import schemas as s


def error_response(
    status: int, message: str, fields: list[str] | None = None
) -> tuple[Response, int]:
    """The JSON error body for ``status``, naming the request's ``fields`` at fault."""
    body = s.Error(error=message, fields=fields or []).model_dump()
    return Response(json.dumps(body), content_type="application/json"), status


class Invalid(Exception):
    """A request that passed the schema but cannot be done as asked (400)."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidFields(Exception):
    """A body with problems in several fields (400)."""

    def __init__(self, message: str, fields: list[str]) -> None:
        super().__init__(message)
        self.fields = fields


class NotFound(Exception):
    """No such upstream, client or listener (404)."""


class Conflict(Exception):
    """The request clashes with what exists, as an upstream address taken (409)."""


class Unavailable(Exception):
    """The cluster cannot be asked now (503), or a node did not answer (504)."""

    def __init__(self, message: str, status: int = 503) -> None:
        super().__init__(message)
        self.status = status
