"""Older name of the gRPC test models: they are ``tests/models.py`` (models) and
``tests/clients.py`` (client helpers) now; this module only re-exports them."""

from __future__ import annotations

from tests.models import (  # noqa: F401
    BARRIER_CONFIG,
    BARRIER_MODEL,
    IDENTITY_MODEL,
    PARAMS_CONFIG,
    PARAMS_MODEL,
    SLOW_CONFIG,
    SLOW_MODEL,
    WIRE_TYPES,
    _identity_config,
    bf16_identity,
    build_repository,
)
