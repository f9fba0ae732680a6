"""The scheduler interface: how one model version's requests reach its instances.

``Model.submit`` validates a request and calls its scheduler's ``enqueue``;
the scheduler decides when and on which instance it runs (alone, batched,
in a sequence's slot, through the response cache, as an ensemble's steps).
The implementations live in ``naiad.scheduling``; ``create_scheduler``
there picks the one a config asks for and hands it the server-wide
``SchedulingContext``. The repository manager builds the instances, then
the scheduler, then runs warmup, before the version is READY.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from naiad.core.errors import Unsupported

if TYPE_CHECKING:
    from naiad.core.instance import ModelInstance
    from naiad.core.model import Model
    from naiad.core.types import InferenceRequest


def _never_on_loop() -> bool:
    return False


@dataclasses.dataclass
class SchedulingContext:
    """What the schedulers of one server share; every scheduler gets it at construction.

    Built by ``naiad.scheduling.make_scheduling_context`` from the options;
    the data plane fills in its own hooks.
    """

    # --rate-limit=execution_count: naiad.scheduling.rate_limiter.RateLimiter
    rate_limiter: Any = None
    # --cache-config: naiad.scheduling.response_cache.ResponseCache
    cache: Any = None
    # the data plane's any-thread submit(request, on_response, stream, caller,
    # parent_trace) -> Model: how an ensemble submits its steps
    submit: Callable[..., Any] | None = None
    # whether the calling thread is the server's event loop (which must never block)
    on_loop_thread: Callable[[], bool] = _never_on_loop
    # the serving version of a model: get_model(name, version) -> Model
    get_model: Callable[[str, int], Any] | None = None


class Scheduler(abc.ABC):
    """One model version's scheduler.

    ``enqueue`` may be called on the event loop or any thread and never
    blocks on the model; the response arrives through the request's callback.
    """

    # whether add_instances / remove_instances work (a reload that only changes
    # instance counts then keeps the version instead of rebuilding it)
    can_resize = False

    def __init__(self, model: Model, instances: list[ModelInstance],
                 context: SchedulingContext):
        self.model = model
        self.instances = instances
        self.context = context

    @abc.abstractmethod
    def enqueue(self, request: InferenceRequest) -> None:
        """Accept a validated request; raise NaiadError (nothing queued) to refuse it."""

    def queue_size(self) -> int:
        """Requests accepted and not yet executing (what the pending-request metric shows)."""
        return 0

    def busy(self) -> bool:
        """Whether requests are queued or executing (an eviction never picks a busy model).

        Default: a request waits in the queue or an instance is executing a batch.
        """
        if self.queue_size() > 0:
            return True
        return any(inst.lock.locked() for inst in self.instances)

    def cancel(self, request: InferenceRequest) -> None:
        """Drop a cancelled request still waiting (answering it CANCELLED); one already
        executing is left to notice ``request.cancelled``. Default: nothing waits."""
        return None

    def add_instances(self, instances: list[ModelInstance]) -> None:
        """Start more instances (an instance_group count grew)."""
        raise Unsupported(f"the scheduler of model '{self.model.name}' cannot add instances")

    async def remove_instances(self, instances: list[ModelInstance]) -> None:
        """End these instances after their current batch (an instance_group count shrank)."""
        raise Unsupported(f"the scheduler of model '{self.model.name}' cannot remove instances")

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop taking requests, drain what is queued and in flight, end the instances."""
