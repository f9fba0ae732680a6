"""The dynamic batcher's queue: priority levels, each with its own queue policy.

Triton's semantics (``ModelDynamicBatching`` / ``ModelQueuePolicy``):

* ``priority_levels`` N > 0 creates levels 1..N, level 1 served first; a
  request's ``priority`` picks its level, and 0 or anything above N means
  ``default_priority_level``. Without levels there is one queue.
* Each level has a ``ModelQueuePolicy``: ``priority_queue_policy[level]`` or
  else ``default_queue_policy``.
* ``max_queue_size`` (0: unbounded) refuses a request at once with
  UNAVAILABLE "Exceeds maximum queue size" (not counted as a failure, as in
  Triton).
* ``default_timeout_microseconds`` (0: none) bounds the time a request waits;
  with ``allow_timeout_override`` a request's own ``timeout`` applies when it
  is shorter. (Triton's code ignores the override when the default is 0; its
  documentation says a request "can set a timeout that is less than the
  default", and "no timeout" is longer than any, so naiad applies it.)
* An expired request is answered UNAVAILABLE "Request timeout expired"
  (``timeout_action: REJECT``) or moves behind the level's unexpired requests
  (``DELAY``).

Everything here runs under the owning batcher's lock.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from naiad.core.errors import Unavailable
from naiad.protocol import model_config_pb2 as mc

if TYPE_CHECKING:
    from naiad.core.types import InferenceRequest

REJECT = mc.ModelQueuePolicy.REJECT
DELAY = mc.ModelQueuePolicy.DELAY

QUEUE_FULL = "Exceeds maximum queue size"
TIMEOUT_EXPIRED = "Request timeout expired"


def queue_full_error(request: "InferenceRequest") -> Unavailable:
    return Unavailable(f"[request id: {request.id or '<id_unknown>'}] {QUEUE_FULL}")


class LevelQueue:
    """One priority level: requests in arrival order, plus the delayed ones behind them."""

    __slots__ = ("items", "deadlines", "delayed", "max_size", "action", "timeout_ns",
                 "allow_override")

    def __init__(self, policy: mc.ModelQueuePolicy):
        self.items: deque = deque()  # requests waiting, oldest first
        self.deadlines: deque = deque()  # monotonic ns per item (0: none)
        self.delayed: deque = deque()  # expired requests under timeout_action DELAY
        self.max_size = int(policy.max_queue_size)
        self.action = policy.timeout_action
        self.timeout_ns = int(policy.default_timeout_microseconds) * 1000
        self.allow_override = bool(policy.allow_timeout_override)

    def __len__(self) -> int:
        return len(self.items) + len(self.delayed)

    @property
    def has_timeouts(self) -> bool:
        return bool(self.timeout_ns or self.allow_override)

    def deadline_for(self, request: "InferenceRequest") -> int:
        timeout = self.timeout_ns
        if self.allow_override and request.timeout_us:
            own = request.timeout_us * 1000
            if timeout == 0 or own < timeout:
                timeout = own
        return request.queue_start_ns + timeout if timeout else 0


class PriorityQueues:
    """All levels of one model's queue; ``levels`` is ordered highest priority first."""

    def __init__(self, batching: mc.ModelDynamicBatching | None):
        if batching is None or batching.priority_levels == 0:
            default = batching.default_queue_policy if batching is not None else \
                mc.ModelQueuePolicy()
            self.levels = [LevelQueue(default)]
            self.level_count = 0
            self.default_level = 0
        else:
            n = int(batching.priority_levels)
            self.levels = []
            for level in range(1, n + 1):
                policy = batching.priority_queue_policy.get(level)
                self.levels.append(LevelQueue(
                    policy if policy is not None else batching.default_queue_policy))
            self.level_count = n
            self.default_level = int(batching.default_priority_level) or n
        self.size = 0
        self.has_timeouts = any(q.has_timeouts for q in self.levels)

    def level_of(self, request: "InferenceRequest") -> LevelQueue:
        if self.level_count == 0:
            return self.levels[0]
        p = request.priority
        if p < 1 or p > self.level_count:
            p = self.default_level
        return self.levels[p - 1]

    def push(self, request: "InferenceRequest") -> int:
        """Queue a request; returns its deadline (0: none). Raises Unavailable when full."""
        q = self.level_of(request)
        if q.max_size and len(q) >= q.max_size:
            raise queue_full_error(request)
        deadline = q.deadline_for(request) if q.has_timeouts else 0
        q.items.append(request)
        q.deadlines.append(deadline)
        self.size += 1
        return deadline

    def remove(self, request: "InferenceRequest") -> bool:
        """Take a request out wherever it waits (cancellation); False if not queued."""
        for q in self.levels:
            for i, r in enumerate(q.items):
                if r is request:
                    del q.items[i]
                    del q.deadlines[i]
                    self.size -= 1
                    return True
            for i, r in enumerate(q.delayed):
                if r is request:
                    del q.delayed[i]
                    self.size -= 1
                    return True
        return False

    def expire(self, now: int, rejected: list) -> int:
        """Apply the timeout policies to every queued request; returns the next deadline.

        Expired REJECT requests go to ``rejected``; expired DELAY requests move
        behind their level's unexpired ones. Returns the earliest remaining
        deadline (0: none).
        """
        nearest = 0
        for q in self.levels:
            if not q.has_timeouts or not q.items:
                continue
            if not any(d and now > d for d in q.deadlines):
                for d in q.deadlines:
                    if d and (nearest == 0 or d < nearest):
                        nearest = d
                continue
            keep_items: deque = deque()
            keep_deadlines: deque = deque()
            for r, d in zip(q.items, q.deadlines):
                if d and now > d:
                    if q.action == DELAY:
                        q.delayed.append(r)
                    else:
                        rejected.append(r)
                        self.size -= 1
                    continue
                keep_items.append(r)
                keep_deadlines.append(d)
                if d and (nearest == 0 or d < nearest):
                    nearest = d
            q.items = keep_items
            q.deadlines = keep_deadlines
        return nearest

    def drain(self) -> list:
        """Every queued request, emptying the queue (server shutdown)."""
        out = []
        for q in self.levels:
            out.extend(q.items)
            out.extend(q.delayed)
            q.items.clear()
            q.deadlines.clear()
            q.delayed.clear()
        self.size = 0
        return out
