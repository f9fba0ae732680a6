"""One error hierarchy for the whole server.

Errors are values with a *kind*; every frontend maps kinds to its own status
codes in exactly one table (``naiad.frontends.status``), so the same failure
reads the same way over HTTP, gRPC and the in-process API.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """Triton's TRITONSERVER_Error_Code, by name."""

    UNKNOWN = "UNKNOWN"
    INTERNAL = "INTERNAL"
    NOT_FOUND = "NOT_FOUND"
    INVALID_ARG = "INVALID_ARG"
    UNAVAILABLE = "UNAVAILABLE"
    UNSUPPORTED = "UNSUPPORTED"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    CANCELLED = "CANCELLED"


class NaiadError(Exception):
    """An error with a kind and a message meant for the client."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str, kind: ErrorKind | None = None):
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind.value}: {self.message!r})"


class InvalidArgument(NaiadError):
    kind = ErrorKind.INVALID_ARG


class NotFound(NaiadError):
    kind = ErrorKind.NOT_FOUND


class Unavailable(NaiadError):
    kind = ErrorKind.UNAVAILABLE


class Internal(NaiadError):
    kind = ErrorKind.INTERNAL


class Unsupported(NaiadError):
    kind = ErrorKind.UNSUPPORTED


class AlreadyExists(NaiadError):
    kind = ErrorKind.ALREADY_EXISTS


class Cancelled(NaiadError):
    kind = ErrorKind.CANCELLED


def as_naiad_error(exc: BaseException) -> NaiadError:
    """Wrap an arbitrary exception (a model's bug, a framework error) as INTERNAL."""
    if isinstance(exc, NaiadError):
        return exc
    text = str(exc) or type(exc).__name__
    return Internal(text)
