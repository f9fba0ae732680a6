"""Schedulers: how a model's requests reach its instances.

``create_scheduler`` picks the scheduler a config asks for: the sequence
batcher (``sequence_batching``), the dynamic batcher (``dynamic_batching``
with ``max_batch_size`` > 0) or the default scheduler; with the response
cache on (``--cache-config`` and ``response_cache { enable: true }``) the
cache sits in front. Every scheduler has ``enqueue(request)`` (called on the
loop or any thread; never blocks; raises NaiadError when it refuses the
request), ``queue_size()``, ``cancel(request)`` (drop a cancelled request
still waiting) and ``async stop()`` (drain, then end the instances).

The repository manager calls ``create_scheduler(model, instances, manager)``
once a version's instances exist (it validates the scheduling config and
registers the instances with the rate limiter first), then
``Model.warmup()`` (``warm_up`` here) before publishing the version READY.
The server-wide pieces (rate limiter, response cache) live in a
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
    from naiad.backends.batch_io import validate_batch_io

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


def create_scheduler(model: "Model", instances: "list[ModelInstance]", owner: Any = None):
    """The scheduler ``model`` asks for, started on ``instances``.

    ``owner`` (the repository manager) keys the server-wide rate limiter and
    response cache; without it neither is used. A config the scheduling work
    refuses raises NaiadError after the instances and the backend model have
    been finalized (the version is then UNAVAILABLE with that message).
    """
    context = context_for(owner) if owner is not None else None
    from naiad.scheduling.rate_limiter import register_rate_limits

    try:
        validate_scheduling_config(model)
        register_rate_limits(context, model, instances)
        scheduler = _build(model, instances, context)
    except BaseException:
        for inst in instances:
            try:
                inst._finalize()  # also returns its rate-limiter claim
            except Exception:  # pragma: no cover - finalize logs its own failures
                log.exception("finalize of instance '%s' failed", inst.name)
        backend_model = model.backend_model
        if backend_model is not None:
            try:
                backend_model.finalize()
            except Exception:
                log.exception("finalize of model '%s' failed", model.name)
        raise
    scheduler.context = context
    return scheduler


def _build(model: "Model", instances: "list[ModelInstance]",
           context: SchedulingContext | None):
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


def warm_up(model: "Model") -> None:
    """``model_warmup``: run the samples on every instance; raises when one fails."""
    if not model.config.model_warmup or model.scheduler is None:
        return
    from naiad.scheduling.warmup import run_warmup

    run_warmup(model, list(model.scheduler.instances))
