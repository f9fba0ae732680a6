"""OpenAI's error object and the status each failure gets.

Every failure answers ``{"error": {"message", "type", "param", "code"}}``
with the status OpenAI's API uses: 400 for a malformed or invalid request,
404 for an unknown model, 413 for a body over the limit, 429 when the
model's queue policy turns the request away (queue full, queue timeout),
503 while the server shuts down or a model is not ready, and 500 only for a
model's own failure. A client's mistake is never a 500.
"""

from __future__ import annotations

from typing import Any

import orjson

from naiad.core.errors import ErrorKind, NaiadError
from naiad.scheduling.queue_policy import QUEUE_FULL, TIMEOUT_EXPIRED

INVALID_REQUEST = "invalid_request_error"
NOT_FOUND_ERROR = "not_found_error"
RATE_LIMIT = "rate_limit_error"
SERVER_ERROR = "server_error"
UNAVAILABLE = "service_unavailable_error"


class OpenAIError(Exception):
    """A failure to answer as an OpenAI error object."""

    def __init__(self, status: int, message: str, type_: str = INVALID_REQUEST,
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def json(self) -> bytes:
        return orjson.dumps(self.body())


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, INVALID_REQUEST, param, code)


def model_not_found(name: str) -> OpenAIError:
    return OpenAIError(404, f"The model '{name}' does not exist", NOT_FOUND_ERROR, "model",
                       "model_not_found")


def from_naiad(error: NaiadError) -> OpenAIError:
    """The OpenAI error for a core failure (submitting or running a request)."""
    kind = error.kind
    message = error.message
    if kind == ErrorKind.UNAVAILABLE and (QUEUE_FULL in message or TIMEOUT_EXPIRED in message):
        return OpenAIError(429, message, RATE_LIMIT, None, "rate_limit_exceeded")
    if kind == ErrorKind.UNAVAILABLE:
        return OpenAIError(503, message, UNAVAILABLE)
    if kind == ErrorKind.NOT_FOUND:
        return OpenAIError(404, message, NOT_FOUND_ERROR, "model", "model_not_found")
    if kind in (ErrorKind.INVALID_ARG, ErrorKind.UNSUPPORTED, ErrorKind.ALREADY_EXISTS):
        return OpenAIError(400, message, INVALID_REQUEST)
    if kind == ErrorKind.CANCELLED:
        return OpenAIError(499, message, INVALID_REQUEST, None, "cancelled")
    # INTERNAL / UNKNOWN: the model failed while running a valid request
    return OpenAIError(500, message, SERVER_ERROR)
