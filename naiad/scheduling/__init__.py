"""Schedulers: how a model's requests reach its instances.

``create_scheduler`` picks the scheduler a config asks for: the sequence
batcher (``sequence_batching``), the dynamic batcher (``dynamic_batching``
with ``max_batch_size`` > 0) or the default scheduler; with the response
cache on (``--cache-config`` and ``response_cache { enable: true }``) the
cache sits in front. Every scheduler has ``enqueue(request)`` (called on the
loop or any thread; never blocks; raises NaiadError when it refuses the
request), ``queue_size()``, ``cancel(request)`` (drop a cancelled request
still waiting) and ``async stop()`` (drain, then end the instances).

``setup_model_scheduling`` is what the repository manager calls once a
version's instances exist: rate-limiter registration, warmup, then the
scheduler. The server-wide pieces (rate limiter, response cache) live in a
``SchedulingContext`` per repository manager.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

from naiad.core.errors import InvalidArgument

if TYPE_CHECKING:
    from naiad.core.instance import ModelInstance
    from naiad.core.model import Model
    from naiad.options import ServerOptions

log = logging.getLogger("naiad.scheduling")


class SchedulingContext:
    """What the models of one server share: the rate limiter and the response cache."""

    def __init__(self, options: "ServerOptions | None"):
        from naiad.scheduling.rate_limiter import RateLimiter, parse_resource_flags
        from naiad.scheduling.response_cache import ResponseCache, parse_cache_config

        self.rate_limiter = None
        self.cache = None
        if options is None:
            return
        mode = getattr(options, "rate_limit", "off") or "off"
        if mode not in ("off", "execution_count"):
            raise InvalidArgument(f"unexpected value for --rate-limit: '{mode}'")
        if mode == "execution_count":
            self.rate_limiter = RateLimiter(parse_resource_flags(options.rate_limit_resources))
        elif options.rate_limit_resources:
            parse_resource_flags(options.rate_limit_resources)  # still refuse malformed flags
        size = parse_cache_config(getattr(options, "cache_config", {}) or {})
        if size:
            self.cache = ResponseCache(size)


_contexts: "weakref.WeakKeyDictionary[Any, SchedulingContext]" = weakref.WeakKeyDictionary()


def context_for(owner: Any, options: "ServerOptions | None" = None) -> SchedulingContext:
    """The scheduling context of a server (keyed on its repository manager)."""
    ctx = _contexts.get(owner)
    if ctx is None:
        ctx = SchedulingContext(options if options is not None else
                                getattr(owner, "options", None))
        _contexts[owner] = ctx
    return ctx


def check_options(options: "ServerOptions") -> None:
    """Refuse malformed scheduling flags at startup (raises InvalidArgument)."""
    SchedulingContext(options)


def validate_scheduling_config(model: "Model") -> None:
    """Config checks that fail the load, with Triton's messages."""
    from naiad.scheduling.ragged import validate_batch_io

    config = model.config
    validate_batch_io(config)
    if config.response_cache.enable and model.decoupled:
        raise InvalidArgument(
            f"Response Cache does not currently support model {config.name} with 'decoupled' "
            "transaction policy. Please disable the response cache.")
    if config.HasField("sequence_batching"):
        from naiad.scheduling.sequence_batcher import (
            parse_controls,
            parse_states,
            validate_sequence_batching,
        )

        validate_sequence_batching(config)
        parse_controls(config)
        parse_states(config, model.model_dir)
    elif config.HasField("dynamic_batching") and model.max_batch_size > 0:
        from naiad.scheduling.dynamic_batcher import validate_dynamic_batching

        validate_dynamic_batching(config)


def create_scheduler(model: "Model", instances: "list[ModelInstance]",
                     context: SchedulingContext | None = None):
    config = model.config
    if config.HasField("sequence_batching"):
        from naiad.scheduling.sequence_batcher import SequenceBatcher

        return SequenceBatcher(model, instances)
    if config.HasField("dynamic_batching") and model.max_batch_size > 0:
        from naiad.scheduling.dynamic_batcher import DynamicBatcher

        scheduler: Any = DynamicBatcher(model, instances)
    else:
        from naiad.scheduling.default import DefaultScheduler

        scheduler = DefaultScheduler(model, instances)
    cache = context.cache if context is not None else None
    if cache is not None and config.response_cache.enable and not model.decoupled:
        from naiad.scheduling.response_cache import CachingScheduler

        scheduler = CachingScheduler(scheduler, cache, model)
    return scheduler


def setup_model_scheduling(owner: Any, model: "Model", instances: "list[ModelInstance]") -> None:
    """Make a freshly built version ready to serve: rate limiter, warmup, scheduler.

    ``owner`` is the repository manager (its ``options`` configure the shared
    context). On failure the instances and the backend model are finalized
    and the error propagates: the version ends UNAVAILABLE with its message.
    """
    from naiad.scheduling.warmup import run_warmup

    registered: list = []
    try:
        ctx = context_for(owner)
        validate_scheduling_config(model)
        limiter = ctx.rate_limiter
        if limiter is not None:
            groups = list(model.config.instance_group)
            for inst in instances:
                group = groups[inst.spec.group_index] if inst.spec.group_index < len(groups) \
                    else None
                if group is None or not group.HasField("rate_limiter"):
                    continue
                slot = limiter.register(inst.name, group.rate_limiter, inst.spec.device_id)
                if slot is not None:
                    registered.append(slot)
                    inst.rate_slot = slot
        run_warmup(model, instances)
        model.scheduler = create_scheduler(model, instances, ctx)
    except BaseException:
        for slot in registered:
            slot.limiter.unregister(slot)
        for inst in instances:
            inst.rate_slot = None
            try:
                inst._finalize()
            except Exception:  # pragma: no cover - finalize logs its own failures
                log.exception("finalize of instance '%s' failed", inst.name)
        backend_model = model.backend_model
        if backend_model is not None:
            try:
                backend_model.finalize()
            except Exception:
                log.exception("finalize of model '%s' failed", model.name)
        raise
