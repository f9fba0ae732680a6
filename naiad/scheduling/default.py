"""Triton's default scheduler: each request runs alone on the next free instance.

All instances of the model pull from one queue, so a free instance takes the
oldest request; requests of other models never wait on this queue. When the
queue is empty and an instance is idle and cheap, the request runs on the
submitting thread instead (see ``ModelInstance.try_run_inline``); order is
kept because that only happens with nothing queued ahead.
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
        self._inline = [i for i in instances if i.inline_enabled]
        for inst in instances:
            inst.start(self._queue.get)

    def _take_queued(self):
        if self._queue.empty():  # the usual case; get_nowait would raise
            return None
        try:
            batch = self._queue.get_nowait()
        except queue.Empty:
            return None
        if batch is None:  # a stop sentinel: leave it for a worker
            self._queue.put(None)
        return batch

    def enqueue(self, request: "InferenceRequest") -> None:
        """Queue a request (any thread; never blocks on the model)."""
        batch = [request]
        for inst in self._inline:
            if inst.try_run_inline(batch, self._take_queued):
                return
        self._queue.put(batch)

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
