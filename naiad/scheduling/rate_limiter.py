"""Triton's rate limiter (``--rate-limit=execution_count``).

Each instance group may list ``rate_limiter { resources [...] priority }``; an
instance executes only while it holds the resources it lists, so instances
that share a resource never run more executions at once than the resource
has copies. Copies per resource default to the largest count any loaded
instance asks for (so every instance can run), unless
``--rate-limit-resource=<name>:<count>[:<device>]`` sets them; an explicit
count below an instance's need fails that model's load, with Triton's
message. Resources are per device unless marked ``global``; naiad's instances
all run on the CPU, which is device 0.

When several instances wait for the same resources, the one with the lowest
``executions x priority`` goes first (priority 0 counts as 1): an instance of
priority 2 gets half the chances of one of priority 1, as Triton documents.
Instances that list no resources are never held back.

An instance acquires its resources right before it executes a batch and
releases them right after, on whichever thread runs it.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
from typing import TYPE_CHECKING, Any

from naiad.core.errors import InvalidArgument

if TYPE_CHECKING:
    from naiad.core.instance import ModelInstance
    from naiad.core.model import Model
    from naiad.protocol import model_config_pb2 as mc

GLOBAL = "global"


@dataclasses.dataclass(frozen=True)
class ResourceLimit:
    name: str
    count: int
    device: int | None  # None: every device


def parse_resource_flags(flags: list[str]) -> list[ResourceLimit]:
    """``--rate-limit-resource`` values: ``<name>:<count>[:<device>]``."""
    out = []
    for text in flags:
        parts = text.split(":")
        if len(parts) not in (2, 3) or not parts[0]:
            raise InvalidArgument(
                f"--rate-limit-resource option format is '<resource_name>:<count>:<device>' "
                f"or '<resource_name>:<count>', got '{text}'")
        try:
            count = int(parts[1])
            device = int(parts[2]) if len(parts) == 3 else None
        except ValueError:
            raise InvalidArgument(
                f"--rate-limit-resource count and device must be integers, got '{text}'") from None
        if count < 0 or (device is not None and device < 0):
            raise InvalidArgument(
                f"--rate-limit-resource count and device must be non-negative, got '{text}'")
        out.append(ResourceLimit(parts[0], count, device))
    return out


class InstanceSlot:
    """One instance's claim on the rate limiter; ``ModelInstance.rate_slot``."""

    __slots__ = ("limiter", "name", "needs", "priority", "executions", "held", "order")

    def __init__(self, limiter: "RateLimiter", name: str, needs: dict, priority: int,
                 order: int):
        self.limiter = limiter
        self.name = name
        self.needs = needs  # {(scope, resource): count}
        self.priority = max(1, priority)
        self.executions = 0
        self.held = False
        self.order = order

    def acquire(self) -> None:
        """Block until this instance's resources are allocated to it."""
        self.limiter._acquire(self, blocking=True)

    def try_acquire(self) -> bool:
        return self.limiter._acquire(self, blocking=False)

    def release(self) -> None:
        self.limiter._release(self)


class RateLimiter:
    """The server's resources and the instances that need them."""

    def __init__(self, limits: list[ResourceLimit] | None = None):
        self._cond = threading.Condition(threading.Lock())
        self._explicit: dict[tuple, int] = {}
        for lim in limits or []:
            self._explicit[(lim.device, lim.name)] = lim.count
        self._slots: list[InstanceSlot] = []
        self._in_use: dict[tuple, int] = {}
        self._waiting: list[InstanceSlot] = []
        self._order = itertools.count()

    # -- registration (model load / unload) --------------------------------------------

    def _explicit_count(self, scope, name: str) -> int | None:
        if scope == GLOBAL:
            # a global resource takes the explicit count given without a device (or any)
            for (device, rname), count in self._explicit.items():
                if rname == name and device is None:
                    return count
            for (_device, rname), count in self._explicit.items():
                if rname == name:
                    return count
            return None
        if (scope, name) in self._explicit:
            return self._explicit[(scope, name)]
        return self._explicit.get((None, name))

    def capacity(self, key: tuple) -> int:
        scope, name = key
        explicit = self._explicit_count(scope, name)
        if explicit is not None:
            return explicit
        return max((s.needs.get(key, 0) for s in self._slots), default=0)

    def register(self, instance_name: str, config: "mc.ModelRateLimiter",
                 device_id: int = 0) -> InstanceSlot | None:
        """Add an instance; None when it lists no resources (it is never held back).

        Raises InvalidArgument when an explicit resource count cannot satisfy it.
        """
        needs: dict[tuple, int] = {}
        for res in config.resources:
            if res.count == 0:
                continue
            scope = GLOBAL if getattr(res, "global") else device_id
            key = (scope, res.name)
            needs[key] = needs.get(key, 0) + int(res.count)
        if not needs:
            return None
        for (scope, name), count in needs.items():
            explicit = self._explicit_count(scope, name)
            if explicit is not None and explicit < count:
                raise InvalidArgument(
                    f'Resource count for "{name}" is limited to {explicit} which will prevent '
                    f"scheduling of one or more model instances, the minimum required count is "
                    f"{count}")
        slot = InstanceSlot(self, instance_name, needs, int(config.priority), next(self._order))
        with self._cond:
            self._slots.append(slot)
            self._cond.notify_all()
        return slot

    def unregister(self, slot: InstanceSlot | None) -> None:
        if slot is None:
            return
        with self._cond:
            if slot in self._slots:
                self._slots.remove(slot)
            self._cond.notify_all()

    # -- allocation ----------------------------------------------------------------------

    def _fits(self, slot: InstanceSlot) -> bool:
        in_use = self._in_use
        for key, count in slot.needs.items():
            if in_use.get(key, 0) + count > self.capacity(key):
                return False
        return True

    def _next_in_line(self) -> InstanceSlot | None:
        best = None
        best_rank = None
        for s in self._waiting:
            if not self._fits(s):
                continue
            rank = (s.executions * s.priority, s.order)
            if best_rank is None or rank < best_rank:
                best, best_rank = s, rank
        return best

    def _acquire(self, slot: InstanceSlot, blocking: bool) -> bool:
        cond = self._cond
        with cond:
            if slot.held:
                return True
            if not blocking:
                if self._waiting and any(w.executions * w.priority < slot.executions *
                                         slot.priority and self._fits(w)
                                         for w in self._waiting):
                    return False
                if not self._fits(slot):
                    return False
            else:
                self._waiting.append(slot)
                try:
                    while self._next_in_line() is not slot:
                        cond.wait()
                finally:
                    self._waiting.remove(slot)
            for key, count in slot.needs.items():
                self._in_use[key] = self._in_use.get(key, 0) + count
            slot.held = True
            slot.executions += 1
            return True

    def _release(self, slot: InstanceSlot) -> None:
        with self._cond:
            if not slot.held:
                return
            for key, count in slot.needs.items():
                self._in_use[key] -= count
            slot.held = False
            self._cond.notify_all()

    def in_use(self, name: str, scope=0) -> int:
        """Copies of a resource allocated right now (for tests and introspection)."""
        with self._cond:
            return self._in_use.get((scope, name), 0)


def register_rate_limits(context: "Any", model: "Model",
                         instances: "list[ModelInstance]") -> None:
    """Give each instance its claim on the rate limiter (``--rate-limit``).

    Raises InvalidArgument when an explicit resource count cannot satisfy an
    instance (claims made so far are left for the caller's cleanup).
    """
    limiter = context.rate_limiter if context is not None else None
    if limiter is None:
        return
    groups = list(model.config.instance_group)
    for inst in instances:
        gi = inst.spec.group_index
        group = groups[gi] if gi < len(groups) else None
        if group is None or not group.HasField("rate_limiter"):
            continue
        inst.rate_slot = limiter.register(inst.name, group.rate_limiter, inst.spec.device_id)
