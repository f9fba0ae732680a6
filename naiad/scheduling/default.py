"""Triton's default scheduler: each request runs alone on the next free instance.

All instances of the model pull from one queue, so a free instance takes the
oldest request; requests of other models never wait on this queue.
"""

from __future__ import annotations

import asyncio
import queue
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from naiad.core.instance import ModelInstance
    from naiad.core.model import Model
    from naiad.core.types import InferenceRequest


class DefaultScheduler:
    def __init__(self, model: "Model", instances: "list[ModelInstance]"):
        self.model = model
        self.instances = instances
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        for inst in instances:
            inst.start(self._queue.get)

    def enqueue(self, request: "InferenceRequest") -> None:
        self._queue.put([request])

    def queue_size(self) -> int:
        return self._queue.qsize()

    async def stop(self) -> None:
        """Let the instances finish everything queued, then end their threads."""
        for _ in self.instances:
            self._queue.put(None)
        loop = asyncio.get_running_loop()
        for inst in self.instances:
            if inst.thread is not None:
                await loop.run_in_executor(None, inst.thread.join)
