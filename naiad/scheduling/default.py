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
import time
from typing import TYPE_CHECKING

from naiad.core.scheduler import Scheduler, SchedulingContext
from naiad.scheduling.rate_limiter import register_rate_limits

if TYPE_CHECKING:
    from naiad.core.instance import ModelInstance
    from naiad.core.model import Model
    from naiad.core.types import InferenceRequest


# Put in the queue to end one specific instance (see ``remove_instances``).
_RETIRE = object()


class DefaultScheduler(Scheduler):
    can_resize = True

    def __init__(self, model: "Model", instances: "list[ModelInstance]",
                 context: SchedulingContext):
        super().__init__(model, instances, context)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._inline = [i for i in instances if i.inline_enabled]
        for inst in instances:
            inst.start(self._next_batch_for(inst))

    def _next_batch_for(self, inst: "ModelInstance"):
        """The worker's source of batches: the shared queue, plus the end-of-life tokens.

        On None (the scheduler stops) or a retire token meant for it, the
        instance takes its own lock for good before returning None: an inline
        run in progress on another thread finishes first, and none starts
        after, so the backend is finalized only once it is idle.
        """
        get = self._queue.get
        put = self._queue.put

        def next_batch():
            while True:
                batch = get()
                if batch is None:
                    inst.lock.acquire()
                    return None
                if batch is _RETIRE:
                    if getattr(inst, "retiring", False):
                        inst.lock.acquire()
                        return None
                    put(batch)  # meant for another instance that is busy: let it finish
                    time.sleep(0.001)
                    continue
                return batch

        return next_batch

    def add_instances(self, instances: "list[ModelInstance]") -> None:
        """Start more instances on this queue (an instance_group count grew)."""
        register_rate_limits(self.context, self.model, instances)
        for inst in instances:
            inst.start(self._next_batch_for(inst))
        self.instances = self.instances + list(instances)
        self._inline = self._inline + [i for i in instances if i.inline_enabled]

    async def remove_instances(self, instances: "list[ModelInstance]") -> None:
        """End these instances once their current batch is done (a count shrank).

        Queued requests stay in the queue for the remaining instances.
        """
        gone = set(map(id, instances))
        for inst in instances:
            inst.retiring = True
        self._inline = [i for i in self._inline if id(i) not in gone]
        self.instances = [i for i in self.instances if id(i) not in gone]
        for _ in instances:
            self._queue.put(_RETIRE)
        loop = asyncio.get_running_loop()
        for inst in instances:
            if inst.thread is not None:
                await loop.run_in_executor(None, inst.thread.join)

    def _take_queued(self):
        if self._queue.empty():  # the usual case; get_nowait would raise
            return None
        try:
            batch = self._queue.get_nowait()
        except queue.Empty:
            return None
        if batch is None or batch is _RETIRE:  # a token for the workers: leave it to them
            self._queue.put(batch)
            return None
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
        # a request that raced past the model's closing gets an answer, not silence
        while True:
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(batch, list):
                from naiad.core.errors import Unavailable

                for request in batch:
                    request.respond_error(Unavailable(
                        f"model '{self.model.name}' version {self.model.version} is unloading"))
