"""Schedulers: how a model's requests reach its instances.

Every scheduler implements ``naiad.core.scheduler.Scheduler`` (``enqueue``,
``queue_size``, ``cancel``, ``add_instances``/``remove_instances`` where
``can_resize``, ``stop``) and gets the server-wide ``SchedulingContext``
(rate limiter, response cache, the data plane's submit) in its
constructor. ``create_scheduler`` picks the one a config asks for: an
ensemble's step scheduler (``platform: "ensemble"``), the sequence batcher
(``sequence_batching``), the dynamic batcher (``dynamic_batching`` with
``max_batch_size`` > 0) or the default scheduler; with the response cache on
(``--cache-config`` and ``response_cache { enable: true }``) the cache sits
in front.

The repository manager calls ``create_scheduler(model, instances, context)``
once a version's instances exist (the scheduling config is validated and the
instances are registered with the rate limiter first), then ``warm_up``
before publishing the version READY. ``make_scheduling_context`` builds the
context from the options (the data plane does, once per server).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from naiad.core.errors import InvalidArgument
from naiad.core.scheduler import Scheduler, SchedulingContext

if TYPE_CHECKING:
    from naiad.core.instance import ModelInstance
    from naiad.core.model import Model
    from naiad.options import ServerOptions

log = logging.getLogger("naiad.scheduling")


def make_scheduling_context(options: "ServerOptions | None", **hooks: Any) -> SchedulingContext:
    """The server-wide scheduling state the options ask for: the rate limiter
    (``--rate-limit``) and the response cache (``--cache-config``); ``hooks`` fill
    the rest of the context (the data plane's submit, ...). Raises InvalidArgument
    on malformed flags."""
    from naiad.scheduling.rate_limiter import RateLimiter, parse_resource_flags
    from naiad.scheduling.response_cache import ResponseCache, parse_cache_config

    context = SchedulingContext(**hooks)
    if options is None:
        return context
    mode = getattr(options, "rate_limit", "off") or "off"
    if mode not in ("off", "execution_count"):
        raise InvalidArgument(f"unexpected value for --rate-limit: '{mode}'")
    if mode == "execution_count":
        context.rate_limiter = RateLimiter(parse_resource_flags(options.rate_limit_resources))
    elif options.rate_limit_resources:
        parse_resource_flags(options.rate_limit_resources)  # still refuse malformed flags
    size = parse_cache_config(getattr(options, "cache_config", {}) or {})
    if size:
        context.cache = ResponseCache(size)
    return context


def check_options(options: "ServerOptions") -> None:
    """Refuse malformed scheduling flags at startup (raises InvalidArgument)."""
    make_scheduling_context(options)


def validate_scheduling_config(model: "Model") -> None:
    """The scheduling checks that fail a version's load, with Triton's messages.

    The rest of the config is checked once by the repository (``repository/config.py``:
    fields, dynamic batching sizes, priorities and ``preserve_ordering``; inputs and
    outputs per version); the sequence batcher's controls and states are checked
    as its constructor parses them.
    """
    from naiad.backends.batch_io import validate_batch_io

    config = model.config
    validate_batch_io(config)
    if config.response_cache.enable and model.decoupled:
        raise InvalidArgument(
            f"Response Cache does not currently support model {config.name} with 'decoupled' "
            "transaction policy. Please disable the response cache.")
    if config.HasField("sequence_batching"):
        from naiad.scheduling.sequence_batcher import validate_sequence_batching

        validate_sequence_batching(config)


def create_scheduler(model: "Model", instances: "list[ModelInstance]",
                     context: SchedulingContext) -> Scheduler:
    """The scheduler ``model`` asks for, started on ``instances``, sharing ``context``.

    A config the scheduling work refuses raises NaiadError after the instances
    and the backend model have been finalized (the version is then UNAVAILABLE
    with that message).
    """
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
    return scheduler


def _build(model: "Model", instances: "list[ModelInstance]",
           context: SchedulingContext) -> Scheduler:
    config = model.config
    if config.platform == "ensemble":
        from naiad.scheduling.ensemble import EnsembleScheduler

        return EnsembleScheduler(model, context)
    if config.HasField("sequence_batching"):
        from naiad.scheduling.sequence_batcher import SequenceBatcher

        return SequenceBatcher(model, instances, context)
    scheduler: Scheduler
    if config.HasField("dynamic_batching") and model.max_batch_size > 0:
        from naiad.scheduling.dynamic_batcher import DynamicBatcher

        scheduler = DynamicBatcher(model, instances, context)
    else:
        from naiad.scheduling.default import DefaultScheduler

        scheduler = DefaultScheduler(model, instances, context)
    if context.cache is not None and config.response_cache.enable and not model.decoupled:
        from naiad.scheduling.response_cache import CachingScheduler

        scheduler = CachingScheduler(scheduler)
    return scheduler


def warm_up(model: "Model") -> None:
    """``model_warmup``: run the samples on every instance; raises when one fails."""
    if not model.config.model_warmup or model.scheduler is None:
        return
    from naiad.scheduling.warmup import run_warmup

    run_warmup(model, list(model.scheduler.instances))
