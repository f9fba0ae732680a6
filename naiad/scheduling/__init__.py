"""Schedulers: how a model's requests reach its instances.

``create_scheduler`` picks the scheduler a config asks for. Every scheduler
has ``enqueue(request)`` (called on the loop or any thread; never blocks),
``queue_size()`` and ``async stop()`` (drain, then end the instances).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from naiad.core.instance import ModelInstance
    from naiad.core.model import Model


def create_scheduler(model: "Model", instances: "list[ModelInstance]"):
    from naiad.scheduling.default import DefaultScheduler

    return DefaultScheduler(model, instances)
