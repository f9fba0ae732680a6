"""The protocol extensions both frontends serve, and how each answers while absent.

Shared memory, tracing and the logging settings are subsystems that plug into
the ``Server`` (``server.shared_memory``, ``server.tracer``,
``server.log_settings``); until one is there, HTTP and gRPC refuse its calls
with the same error from here. CUDA shared memory needs a GPU, which naiad
does not drive: no region can exist and registering one is refused.
"""

from __future__ import annotations

from typing import Any

from naiad.core.errors import NotFound, Unavailable, Unsupported

# new inference is refused from the moment the server starts stopping
SHUTTING_DOWN = "Server is shutting down: new inference requests are not accepted"


def refuse_if_shutting_down(server: Any) -> None:
    if server.shutting_down:
        raise Unavailable(SHUTTING_DOWN)


def system_shared_memory(server: Any) -> Any:
    shm = getattr(server, "shared_memory", None)
    if shm is None:
        raise Unsupported("system shared memory is not supported yet")
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


class NoCudaSharedMemory:
    """CUDA shared memory on a server without GPU support."""

    @staticmethod
    def status(name: str = "") -> list[dict]:
        if name:
            raise NotFound(f"Unable to find cuda shared memory region: '{name}'")
        return []

    @staticmethod
    def register(name: str, raw_handle: bytes, device_id: int, byte_size: int) -> None:
        raise Unsupported("CUDA shared memory is not supported: this server has no GPU support")

    @staticmethod
    def unregister(name: str = "") -> None:
        """Nothing is registered, so there is nothing to remove (Triton answers OK too)."""


cuda_shared_memory = NoCudaSharedMemory()
