"""The protocol extensions the frontends serve, and how each answers while absent.

Shared memory, tracing and the logging settings are subsystems that plug into
the ``Server`` (``server.shared_memory``, ``server.cuda_shared_memory``,
``server.tracer``, ``server.log_settings``); a server without one (an
embedding that never installed it) refuses its calls with these errors.
"""

from __future__ import annotations

from typing import Any

from naiad.core.errors import Unavailable, Unsupported

# new inference is refused from the moment the server starts stopping
SHUTTING_DOWN = "Server is shutting down: new inference requests are not accepted"


def refuse_if_shutting_down(server: Any) -> None:
    if server.shutting_down:
        raise Unavailable(SHUTTING_DOWN)


def system_shared_memory(server: Any) -> Any:
    shm = getattr(server, "shared_memory", None)
    if shm is None:
        raise Unsupported("system shared memory is not supported by this server")
    return shm


def tracer(server: Any) -> Any:
    t = getattr(server, "tracer", None)
    if t is None:
        raise Unsupported("the trace extension is not available")
    return t


def log_settings(server: Any) -> Any:
    settings = getattr(server, "log_settings", None)
    if settings is None:
        raise Unsupported("the logging extension is not available")
    return settings


def cuda_shared_memory(server: Any) -> Any:
    cuda = getattr(server, "cuda_shared_memory", None)
    if cuda is None:
        raise Unsupported("CUDA shared memory is not supported by this server")
    return cuda
