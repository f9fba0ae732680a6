"""Older name of the observability test models: they are ``tests/models.py`` (models) and
``tests/clients.py`` (client helpers) now; this module only re-exports them."""

from __future__ import annotations

from tests.models import (  # noqa: F401
    CUSTOM_METRICS_CONFIG,
    CUSTOM_METRICS_PY,
    ECHO_CONFIG,
    ECHO_PY,
    LOGGER_CONFIG,
    LOGGER_PY,
    SIMPLE_CONFIG,
    SIMPLE_PY,
    write_custom_metrics,
    write_echo,
    write_logger,
    write_simple,
)
