"""Metrics, tracing and logging: what the server tells about itself."""

from __future__ import annotations

from typing import Any


def validate_options(options: Any) -> None:
    """Check --trace-config and --metrics-config at startup (raises InvalidArgument)."""
    from naiad.observability.metrics import MetricsConfig
    from naiad.observability.tracing import MODE_OPENTELEMETRY, _OtelExporter, parse_trace_config

    values, otel = parse_trace_config(options.trace_config)
    MetricsConfig(options.metrics_config)
    if values["mode"] == MODE_OPENTELEMETRY:
        _OtelExporter(otel).shutdown()  # the SDK must be importable
