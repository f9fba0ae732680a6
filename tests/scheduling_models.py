"""Older name of the scheduling test models and client helpers: they are ``tests/models.py`` (models) and
``tests/clients.py`` (client helpers) now; this module only re-exports them."""

from __future__ import annotations

from tests.clients import Result, infer_probe, run, staggered  # noqa: F401
from tests.models import PROBE_MODEL, probe_config, write_probe  # noqa: F401
