"""The one table from error kinds to protocol status codes.

Triton's mapping (http_server.cc / grpc_server.cc), with one deliberate
difference from HTTP: nothing a client sends is answered with 500 here,
because request parsing raises INVALID_ARG where Triton lets some parse
failures surface as INTERNAL.
"""

from __future__ import annotations

from naiad.core.errors import ErrorKind

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.INTERNAL: 500,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.UNSUPPORTED: 501,
    ErrorKind.UNKNOWN: 400,
    ErrorKind.INVALID_ARG: 400,
    ErrorKind.ALREADY_EXISTS: 400,
    ErrorKind.CANCELLED: 400,
}

# grpc.StatusCode member names; resolved lazily so the HTTP-only path never imports grpc
GRPC_STATUS_NAME: dict[ErrorKind, str] = {
    ErrorKind.UNKNOWN: "UNKNOWN",
    ErrorKind.INTERNAL: "INTERNAL",
    ErrorKind.NOT_FOUND: "NOT_FOUND",
    ErrorKind.INVALID_ARG: "INVALID_ARGUMENT",
    ErrorKind.UNAVAILABLE: "UNAVAILABLE",
    ErrorKind.UNSUPPORTED: "UNIMPLEMENTED",
    ErrorKind.ALREADY_EXISTS: "ALREADY_EXISTS",
    ErrorKind.CANCELLED: "CANCELLED",
}


def http_status(kind: ErrorKind) -> int:
    return HTTP_STATUS.get(kind, 400)


def grpc_status(kind: ErrorKind):
    import grpc

    return getattr(grpc.StatusCode, GRPC_STATUS_NAME.get(kind, "UNKNOWN"))
