"""Wiring of the observability and shared-memory extensions into a Server.

``install`` runs in ``Server.__init__`` and gives the server its shared-memory
registries, its tracer and (unless ``--allow-metrics=false``) its metrics;
``close`` runs at the end of ``Server.stop``. Both frontends reach these
through the server's attributes (``shared_memory``, ``cuda_shared_memory``,
``tracer``, ``metrics``), so HTTP and gRPC share one registry and one set of
settings.
"""

from __future__ import annotations

import logging
from typing import Any

from naiad.core.shared_memory import CudaSharedMemoryManager, SystemSharedMemoryManager
from naiad.observability.metrics import MetricsConfig, ServerMetrics
from naiad.observability.tracing import MODE_OPENTELEMETRY, Tracer, parse_trace_config

log = logging.getLogger("naiad.server")


def validate_options(options: Any) -> None:
    """Check --trace-config and --metrics-config (raises InvalidArgument)."""
    values, otel = parse_trace_config(options.trace_config)
    MetricsConfig(options.metrics_config)
    if values["mode"] == MODE_OPENTELEMETRY:
        from naiad.observability.tracing import _OtelExporter  # the SDK must be importable

        _OtelExporter(otel).shutdown()


def _add_extensions(server: Any, names: list[str], after: str | None) -> None:
    ext = server.extensions
    pos = ext.index(after) + 1 if after in ext else len(ext)
    for name in names:
        if name not in ext:
            ext.insert(pos, name)
            pos += 1


def install(server: Any) -> None:
    opts = server.options
    server.shared_memory = SystemSharedMemoryManager()
    server.cuda_shared_memory = CudaSharedMemoryManager()
    manager = server.manager

    def model_exists(name: str) -> bool:
        return name in manager.models or name in manager.model_dirs()

    server.tracer = Tracer(opts.trace_config, model_exists=model_exists)
    server.metrics = ServerMetrics(server) if opts.allow_metrics else None
    _add_extensions(server, ["system_shared_memory", "cuda_shared_memory"],
                    after="model_configuration")
    _add_extensions(server, ["trace"], after=None)


def close(server: Any) -> None:
    """Flush traces and release every shared-memory mapping (server shutdown)."""
    tracer = getattr(server, "tracer", None)
    if tracer is not None:
        try:
            tracer.close()
        except Exception:
            log.exception("closing the trace output failed")
    shm = getattr(server, "shared_memory", None)
    if shm is not None:
        shm.close()
