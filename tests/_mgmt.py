"""Older name of the model-management helpers: they are ``tests/models.py`` (models) and
``tests/clients.py`` (client helpers) now; this module only re-exports them."""

from __future__ import annotations

from tests.clients import (  # noqa: F401
    NOT_ALLOWED_MESSAGE,
    Traffic,
    call,
    index,
    infer,
    infer_body,
    states,
    wait_for,
)
from tests.models import NO_INLINE, add_model, config_text, model_py  # noqa: F401
