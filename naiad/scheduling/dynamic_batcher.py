"""Triton's dynamic batcher: many small requests become few large executions.

Batches are formed by the instances themselves: each instance's worker
thread, when free, takes the lock, forms the best batch the queue allows (or
waits for the queue delay) and runs it. A formed batch therefore never hops
to another thread, and batches are only formed when an instance can run them,
which is what lets them grow under load (while every instance is busy the
queue fills; the next free instance takes up to ``max_batch_size`` at once).

Batch formation follows Triton's ``DynamicBatchScheduler``:

* requests are taken in priority order, then arrival order;
* a batch never exceeds ``max_batch_size``; ``preferred_batch_size`` (default
  ``[max_batch_size]``) caps it where possible: the largest preferred size
  the queue allows is sent at once;
* otherwise, with ``max_queue_delay_microseconds`` 0 the largest batch
  available is sent at once; with a delay, the batch waits until it reaches
  the largest preferred size or its oldest request has waited the delay;
* a request whose variable-size inputs (those with -1 dims that are not
  ``allow_ragged_batch``) differ in shape from the batch's, or whose set of
  inputs differs (optional inputs), closes the batch: it starts the next one;
* ``preserve_ordering`` delivers responses in the order requests left the
  queue, whichever instance ran them;
* queue policies (size bounds, timeouts, REJECT/DELAY) and priority levels:
  ``naiad.scheduling.queue_policy``. Expired requests under REJECT are
  answered at their deadline by a small timer thread, even while every
  instance is busy, never later.

Inline execution: for an instance that runs cheap pure Python
(``ModelInstance.try_run_inline``) and a batcher with no delay configured, a
request that finds the queue empty and the instance idle runs at once on the
submitting thread, as a batch of one (what the batcher would send anyway).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from typing import TYPE_CHECKING

from naiad.core.errors import Cancelled, Unavailable
from naiad.core.scheduler import Scheduler, SchedulingContext
from naiad.core.statistics import REJECTED
from naiad.scheduling.delivery import OrderedDelivery
from naiad.scheduling.queue_policy import TIMEOUT_EXPIRED, PriorityQueues
from naiad.scheduling.rate_limiter import register_rate_limits

if TYPE_CHECKING:
    from naiad.core.instance import ModelInstance
    from naiad.core.model import Model
    from naiad.core.types import InferenceRequest

log = logging.getLogger("naiad.scheduling")

_monotonic_ns = time.monotonic_ns


def batching_shape_inputs(model: "Model") -> tuple[tuple[str, ...], bool]:
    """(inputs whose shapes must match within a batch, whether input sets must match).

    As Triton: variable-size inputs that are not ragged must have equal shapes
    in a batch (the model code and the framework expect one tensor per
    input); with optional inputs, all requests of a batch carry the same set.
    """
    names = []
    optional = False
    for io in model.config.input:
        if io.optional:
            optional = True
        if io.allow_ragged_batch:
            continue
        dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
        if -1 in dims or io.is_shape_tensor:
            names.append(io.name)
    return tuple(names), optional


class DynamicBatcher(Scheduler):
    """The scheduler of a model with ``dynamic_batching`` (and max_batch_size > 0)."""

    can_resize = True

    def __init__(self, model: "Model", instances: "list[ModelInstance]",
                 context: SchedulingContext):
        super().__init__(model, instances, context)
        config = model.config
        db = config.dynamic_batching
        self.max_batch = max(1, model.max_batch_size)
        prefs = sorted({int(s) for s in db.preferred_batch_size if 0 < s <= self.max_batch})
        self.preferred = frozenset(prefs or [self.max_batch])
        self.max_preferred = max(self.preferred)
        self.delay_ns = int(db.max_queue_delay_microseconds) * 1000
        self.queues = PriorityQueues(db)
        self.cond = threading.Condition(threading.Lock())
        self.idle = 0  # worker threads waiting for work
        self.stopping = False
        self._shape_inputs, self._same_input_set = batching_shape_inputs(model)
        self._check_inputs = bool(self._shape_inputs or self._same_input_set)
        self.order = OrderedDelivery() if db.preserve_ordering else None
        # a batch of one may run on the submitting thread (see the module docstring)
        self._inline_ok = self.delay_ns == 0 and self.order is None
        self._inline = [i for i in instances if i.inline_enabled] if self._inline_ok else []
        self._timer: threading.Thread | None = None
        self._timer_wake = threading.Event()
        self._next_deadline = 0
        if self.queues.has_timeouts:
            self._timer = threading.Thread(target=self._timer_loop,
                                           name=f"naiad-timeouts-{model.name}", daemon=True)
            self._timer.start()
        for inst in instances:
            inst.start(functools.partial(self._next_batch, inst))

    # -- intake (any thread; never blocks on the model) ------------------------------

    def enqueue(self, request: "InferenceRequest") -> None:
        if self._inline and self.queues.size == 0:
            batch = [request]
            for inst in self._inline:
                if inst.try_run_inline(batch, self._take_queued):
                    return
        cond = self.cond
        with cond:
            if self.stopping:
                raise Unavailable(
                    f"[request id: {request.id or '<id_unknown>'}] Server is stopping, scheduler "
                    "for model has stopped accepting new inference requests")
            deadline = self.queues.push(request)
            if self.idle:
                cond.notify()
        if deadline and (self._next_deadline == 0 or deadline < self._next_deadline):
            self._next_deadline = deadline
            self._timer_wake.set()

    def queue_size(self) -> int:
        return self.queues.size

    def cancel(self, request: "InferenceRequest") -> None:
        """Drop a cancelled request that is still queued, answering it CANCELLED."""
        with self.cond:
            removed = self.queues.remove(request)
        if removed and request.respond_error(Cancelled("request was cancelled")):
            self.model.stats.record_request(request, False, _monotonic_ns())

    # -- batch formation (under the lock) --------------------------------------------

    def _input_key(self, request: "InferenceRequest") -> tuple:
        inputs = request.inputs
        key = tuple(inputs[n].data.shape if n in inputs else None for n in self._shape_inputs)
        if self._same_input_set:
            key = (key, frozenset(inputs))
        return key

    def _form(self, now: int, force: bool = False) -> "tuple[list | None, int]":
        """The batch to send now, or (None, ns to wait) while it should grow."""
        queues = self.queues
        if queues.size == 0:
            return None, 0
        max_batch = self.max_batch
        max_pref = self.max_preferred
        preferred = self.preferred
        check = self._check_inputs
        key = None
        size = 0
        n = 0
        best_n = 0
        send_now = False
        oldest = 0
        for q in queues.levels:
            for seq in (q.items, q.delayed):
                for r in seq:
                    bs = r.batch_size or 1
                    if n == 0:
                        if check:
                            key = self._input_key(r)
                    else:
                        if best_n == 0 and size + bs > max_pref:
                            best_n = n  # the largest batch within the preferred sizes
                        if size + bs > max_batch:
                            send_now = True
                            break
                        if check and self._input_key(r) != key:
                            send_now = True
                            break
                    n += 1
                    size += bs
                    t = r.queue_start_ns
                    if oldest == 0 or t < oldest:
                        oldest = t
                    if size in preferred:
                        best_n = n
                if send_now:
                    break
            if send_now:
                break
        delay = self.delay_ns
        exceeded = delay != 0 and now - oldest >= delay
        if force or self.stopping:
            take = best_n if best_n and not exceeded else n
        elif best_n and not exceeded:
            take = best_n
        elif send_now or size >= max_pref or delay == 0 or exceeded:
            take = n
        else:
            return None, delay - (now - oldest)
        return self._pop(take), 0

    def _pop(self, count: int) -> list:
        """Take the first ``count`` requests in scan order (priority, then arrival)."""
        batch = []
        queues = self.queues
        for q in queues.levels:
            items = q.items
            while count and items:
                batch.append(items.popleft())
                q.deadlines.popleft()
                count -= 1
            delayed = q.delayed
            while count and delayed:
                batch.append(delayed.popleft())
                count -= 1
            if not count:
                break
        queues.size -= len(batch)
        if self.order is not None:
            self.order.register(batch)
        return batch

    def _take_queued(self) -> "list | None":
        """A batch of what is queued right now (inline runs take the backlog first)."""
        if self.queues.size == 0:
            return None
        with self.cond:
            batch, _ = self._form(_monotonic_ns(), force=True)
        return batch

    # -- the instances' side --------------------------------------------------------------

    def _next_batch(self, instance: "ModelInstance") -> "list | None":
        """Block until this instance should run a batch; None when it must end.

        Before returning None the instance takes its own lock for good: an
        inline run in progress on another thread finishes first and none starts
        after, so its backend is finalized only once idle.
        """
        cond = self.cond
        with cond:
            while True:
                if getattr(instance, "retiring", False):
                    break
                if self.queues.size == 0:
                    if self.stopping:
                        break
                    self.idle += 1
                    cond.wait()
                    self.idle -= 1
                    continue
                batch, wait_ns = self._form(_monotonic_ns())
                if batch is not None:
                    if self.queues.size and self.idle:
                        cond.notify()  # another free instance can take the rest
                    return batch
                self.idle += 1
                cond.wait(wait_ns / 1e9)
                self.idle -= 1
        instance.lock.acquire()
        return None

    # -- instance group resizing (live reload) ----------------------------------------------

    def add_instances(self, instances: "list[ModelInstance]") -> None:
        """Start more instances on this batcher (an instance_group count grew)."""
        register_rate_limits(self.context, self.model, instances)
        for inst in instances:
            inst.start(functools.partial(self._next_batch, inst))
        self.instances = self.instances + list(instances)
        if self._inline_ok:
            self._inline = self._inline + [i for i in instances if i.inline_enabled]

    async def remove_instances(self, instances: "list[ModelInstance]") -> None:
        """End these instances after their current batch (a count shrank); the queue stays."""
        gone = set(map(id, instances))
        self._inline = [i for i in self._inline if id(i) not in gone]
        self.instances = [i for i in self.instances if id(i) not in gone]
        with self.cond:
            for inst in instances:
                inst.retiring = True
            self.cond.notify_all()
        loop = asyncio.get_running_loop()
        for inst in instances:
            if inst.thread is not None:
                await loop.run_in_executor(None, inst.thread.join)

    # -- timeouts --------------------------------------------------------------------------

    def _timer_loop(self) -> None:
        """Answer requests whose queue timeout passed, at their deadline."""
        wake = self._timer_wake
        while True:
            wake.clear()  # before looking: a deadline queued after this wakes the wait below
            rejected: list = []
            with self.cond:
                if self.stopping and self.queues.size == 0:
                    return
                now = _monotonic_ns()
                nearest = self.queues.expire(now, rejected)
                self._next_deadline = nearest
            if rejected:
                self._reject(rejected)
            if nearest:
                wake.wait(max(0.0, (nearest - _monotonic_ns()) / 1e9) + 0.0005)
            else:
                wake.wait()

    def _reject(self, requests: list) -> None:
        stats = self.model.stats
        for r in requests:
            if not r.responded:  # a failure whose reason is REJECTED, as in Triton
                stats.record_request(r, False, _monotonic_ns(), reason=REJECTED)
                r.respond_error(Unavailable(TIMEOUT_EXPIRED))

    # -- lifecycle ---------------------------------------------------------------------------

    async def stop(self) -> None:
        """Run everything already accepted, then end the instances' threads."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self._timer_wake.set()
        loop = asyncio.get_running_loop()
        for inst in self.instances:
            if inst.thread is not None:
                await loop.run_in_executor(None, inst.thread.join)
        if self._timer is not None:
            self._timer_wake.set()
            await loop.run_in_executor(None, self._timer.join, 5.0)
