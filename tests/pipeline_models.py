"""Older name of the pipeline test models: they are ``tests/models.py`` (models) and
``tests/clients.py`` (client helpers) now; this module only re-exports them."""

from __future__ import annotations

from tests.models import (  # noqa: F401
    AFFINE_CONFIG,
    AFFINE_PY,
    ASYNC_REPEAT_PY,
    CAST_CONFIG,
    CAST_PY,
    REPEAT_CONFIG,
    REPEAT_PY,
    SUM_CONFIG,
    SUM_PY,
    step,
    write_affine,
    write_cast,
    write_ensemble,
    write_repeat,
    write_sum,
)
