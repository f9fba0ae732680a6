"""Load on first request (``--model-load-on-demand=true``).

``DataPlane.submit`` looks a model up in the repository manager: two dict
lookups, unchanged for loaded models. Only when the lookup fails does it call
``OnDemandLoader.park``, which, for a model that is in a repository and has
no version serving:

* parks the request (from any thread; nothing blocks) with the model's one
  ``PendingLoad``: however many requests arrive, the model loads once;
* starts that load on the event loop (``manager.load_model``: dependencies
  first, the memory budget's evictions through ``Residency``);
* when the load is done, hands each parked request to ``submit`` again, which
  now finds the model; if the load failed, every parked request gets the
  reason (UNAVAILABLE: HTTP 503), and the next request tries again;
* answers a request that waited ``--model-load-on-demand-timeout-secs``
  with UNAVAILABLE (the load goes on for the requests after it).

``PendingLoad`` stands in for the model ``submit`` returns: it has the
model's ``name`` and ``cancel(request)`` (a client that disconnects while its
model loads is answered CANCELLED and leaves the queue).

It also tells the truth about lazily loadable models: the repository index
shows a model never loaded as ``UNAVAILABLE`` with the reason that it loads
on its first request, and one unloaded by the budget or for idleness says
so; with strict readiness the server is ready when the models loaded at
start (``--load-model``) serve, whatever the lazily loaded ones do.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from naiad.core.errors import Cancelled, InvalidArgument, NaiadError, Unavailable, as_naiad_error
from naiad.options import MODE_POLL
from naiad.repository.residency import parse_memory_limit

if TYPE_CHECKING:
    from naiad.core.types import InferenceRequest, ResponseCallback
    from naiad.observability.model_loading import ModelLoadingMetrics
    from naiad.repository.manager import ModelRepositoryManager
    from naiad.repository.residency import Residency

log = logging.getLogger("naiad.repository")

UNAVAILABLE = "UNAVAILABLE"
UNLOADED = "unloaded"
NOT_LOADED = "not loaded: loads on its first inference request"
_REASONS = {
    "memory": "unloaded to stay under --model-memory-limit: loads on its next inference "
              "request",
    "idle": "unloaded after {idle:g} s without requests: loads on its next inference request",
}


def check_on_demand_options(opts: Any) -> None:
    """Refuse combinations of the on-demand flags that cannot work (InvalidArgument)."""
    on = opts.model_load_on_demand
    if on and opts.model_control_mode == MODE_POLL:
        raise InvalidArgument(
            "--model-load-on-demand=true needs --model-control-mode=explicit or none "
            "(poll mode loads every model)")
    if not on:
        for flag, value in (("--model-memory-limit", opts.model_memory_limit),
                            ("--model-idle-unload-secs", opts.model_idle_unload_secs)):
            if value:
                raise InvalidArgument(f"{flag} needs --model-load-on-demand=true (a model "
                                      "it unloads must be able to load again on its own)")
    parse_memory_limit(opts.model_memory_limit)
    if opts.model_idle_unload_secs < 0:
        raise InvalidArgument("--model-idle-unload-secs must not be negative")
    if opts.model_load_on_demand_timeout_secs <= 0:
        raise InvalidArgument("--model-load-on-demand-timeout-secs must be positive")


class _Waiter:
    __slots__ = ("request", "on_response", "stream", "caller", "parent_trace", "timer",
                 "model")

    def __init__(self, request: InferenceRequest, on_response: ResponseCallback, stream: bool,
                 caller: str, parent_trace: Any):
        self.request = request
        self.on_response = on_response
        self.stream = stream
        self.caller = caller
        self.parent_trace = parent_trace
        self.timer: asyncio.TimerHandle | None = None
        self.model: Any = None  # where it went once its model loaded


class PendingLoad:
    """One model's load in progress and the requests waiting for it."""

    decoupled = False

    def __init__(self, loader: OnDemandLoader, name: str):
        self.name = name
        self._loader = loader
        self.waiters: dict[int, _Waiter] = {}  # id(request) -> waiter, until claimed
        self.all: dict[int, _Waiter] = {}  # every waiter it took (for cancel)
        self.futures: list[asyncio.Future] = []  # ensure_loaded callers (on the loop)

    def cancel(self, request: InferenceRequest) -> None:
        """The client gave up: answer CANCELLED if it still waits, else pass it on."""
        self._loader._cancel(self, request)


class OnDemandLoader:
    """Loads models on their first request; see the module docstring.

    ``submit``: the data plane's any-thread submit, to hand parked requests on;
    ``loop``: returns the event loop (None until the server runs).
    """

    def __init__(self, manager: ModelRepositoryManager, *, submit: Callable[..., Any],
                 loop: Callable[[], asyncio.AbstractEventLoop | None], timeout_secs: float,
                 pinned: list[str], residency: Residency | None = None,
                 metrics: ModelLoadingMetrics | None = None):
        self.manager = manager
        self._submit = submit
        self._loop = loop
        self.timeout_secs = float(timeout_secs)
        self.pinned = list(pinned)
        self.residency = residency
        self.metrics = metrics
        self._lock = threading.Lock()
        self._pending: dict[str, PendingLoad] = {}
        self._tasks: set[asyncio.Task] = set()
        self.stopping = False
        if metrics is not None:
            metrics.gauges = self.gauges

    # -- the cold path (any thread) ----------------------------------------------------------

    def park(self, request: InferenceRequest, on_response: ResponseCallback, stream: bool,
             caller: str, parent_trace: Any) -> Any:
        """Take a request whose model lookup failed: a PendingLoad (its model loads), the
        model (it serves now), or None (not ours: the lookup's error stands)."""
        name = request.model_name
        entry = self.manager.models.get(name)
        if entry is not None and entry.default is not None:
            # something serves: it loaded since the lookup (submit again), or the request
            # asks for a version that does not serve (the lookup's error stands)
            version = request.model_version
            if version < 0 or version in entry.ready:
                return self._submit(request, on_response, stream, caller, parent_trace)
            return None
        loop = self._loop()
        if self.stopping or loop is None or not self.manager.in_repository(name):
            return None
        waiter = _Waiter(request, on_response, stream, caller, parent_trace)
        request.set_response_callback(on_response)  # errors are answered through it
        with self._lock:
            pending = self._pending.get(name)
            first = pending is None
            if first:
                pending = self._pending[name] = PendingLoad(self, name)
            pending.waiters[id(request)] = waiter
            pending.all[id(request)] = waiter
        if self.metrics is not None:
            self.metrics.cold_start(name)
        loop.call_soon_threadsafe(self._arm, pending, waiter, first)
        return pending

    # -- on the event loop --------------------------------------------------------------------

    async def ensure_loaded(self, name: str) -> None:
        """Load ``name`` if a request for it would (one load with the requests waiting for
        it); returns once it serves. Raises NaiadError (UNAVAILABLE) if the load fails or
        takes longer than the timeout; does nothing for a model that is not in a
        repository (the caller's lookup then says so)."""
        entry = self.manager.models.get(name)
        if entry is not None and entry.default is not None:
            return
        if self.stopping or not self.manager.in_repository(name):
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        with self._lock:
            pending = self._pending.get(name)
            first = pending is None
            if first:
                pending = self._pending[name] = PendingLoad(self, name)
            pending.futures.append(done)
        if self.metrics is not None:
            self.metrics.cold_start(name)
        if first:
            task = loop.create_task(self._load(pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            error = await asyncio.wait_for(asyncio.shield(done), self.timeout_secs)
        except asyncio.TimeoutError:
            if self.metrics is not None:
                self.metrics.cold_start_failure(name, "timeout")
            raise Unavailable(self._timeout_message(name)) from None
        if error is not None:
            raise error

    def _timeout_message(self, name: str) -> str:
        return (f"timed out after {self.timeout_secs:g} s waiting for model '{name}' to load "
                "(--model-load-on-demand-timeout-secs)")

    def _arm(self, pending: PendingLoad, waiter: _Waiter, first: bool) -> None:
        loop = asyncio.get_running_loop()
        if id(waiter.request) in pending.waiters:
            waiter.timer = loop.call_later(self.timeout_secs, self._expire, pending, waiter)
        if first:
            task = loop.create_task(self._load(pending))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _claim(self, pending: PendingLoad, waiter: _Waiter) -> bool:
        with self._lock:
            return pending.waiters.pop(id(waiter.request), None) is not None

    def _expire(self, pending: PendingLoad, waiter: _Waiter) -> None:
        if not self._claim(pending, waiter):
            return
        self._fail(pending.name, waiter, Unavailable(self._timeout_message(pending.name)),
                   "timeout")

    async def _load(self, pending: PendingLoad) -> None:
        name = pending.name
        error: NaiadError | None = None
        try:
            if not self.manager.model_ready(name):
                log.info("loading '%s' on demand", name, extra={"model": name})
                await self.manager.load_model(name)
        except NaiadError as exc:
            error = exc
        except asyncio.CancelledError:
            error = Unavailable("the server is shutting down")
        except Exception as exc:  # noqa: BLE001 - every waiter gets an answer
            log.exception("loading '%s' on demand failed", name)
            error = as_naiad_error(exc)
        with self._lock:
            if self._pending.get(name) is pending:
                del self._pending[name]
            waiters = list(pending.waiters.values())
            pending.waiters.clear()
            futures, pending.futures = pending.futures, []
        failure = None
        if error is not None:
            reason = error.message.strip().rstrip(";")
            failure = Unavailable(f"model '{name}' failed to load on demand: {reason}")
        for fut in futures:
            if not fut.done():
                fut.set_result(failure)
                if failure is not None and self.metrics is not None:
                    self.metrics.cold_start_failure(name, "load_failed")
        if failure is not None:
            for w in waiters:
                self._fail(name, w, failure, "load_failed")
            return
        for w in waiters:
            self._hand_on(name, w)

    def _hand_on(self, name: str, w: _Waiter) -> None:
        if w.timer is not None:
            w.timer.cancel()
        request = w.request
        try:
            model = self._submit(request, w.on_response, w.stream, w.caller, w.parent_trace)
        except NaiadError as exc:
            request.respond_error(exc)
            return
        w.model = model
        if request.cancelled:  # the client gave up while it was handed on
            model.cancel(request)

    def _fail(self, name: str, w: _Waiter, error: NaiadError, reason: str) -> None:
        if w.timer is not None:
            w.timer.cancel()
        if self.metrics is not None:
            self.metrics.cold_start_failure(name, reason)
        w.request.respond_error(error)

    # -- any thread ------------------------------------------------------------------------------

    def _cancel(self, pending: PendingLoad, request: InferenceRequest) -> None:
        request.cancelled = True
        waiter = pending.all.get(id(request))
        if waiter is None:
            return
        if self._claim(pending, waiter):
            if waiter.timer is not None:
                loop = self._loop()
                if loop is not None:
                    loop.call_soon_threadsafe(waiter.timer.cancel)
            request.respond_error(Cancelled("the request was cancelled while its model "
                                            "loaded"))
        elif waiter.model is not None:
            waiter.model.cancel(request)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if self.residency is not None:
            self.residency.start()

    async def stop(self) -> None:
        """Answer every waiting request (the server is shutting down); let loads in
        progress finish, so that the unload that follows finds them."""
        self.stopping = True
        with self._lock:
            waiting = [(p, list(p.waiters.values())) for p in self._pending.values()]
            for p, _ in waiting:
                p.waiters.clear()
                for fut in p.futures:
                    if not fut.done():
                        fut.set_result(Unavailable("Server is shutting down"))
                p.futures = []
        for p, ws in waiting:
            for w in ws:
                self._fail(p.name, w, Unavailable(
                    "Server is shutting down: the request's model was still loading"),
                    "shutdown")
        if self.residency is not None:
            await self.residency.stop()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- what the server tells ----------------------------------------------------------------

    def ready(self) -> bool:
        """Strict readiness: the models loaded at start (``--load-model``) serve."""
        manager = self.manager
        if "*" in self.pinned:
            return manager.all_ready()
        for name in self.pinned:
            entry = manager.models.get(name)
            if entry is None:
                return False
            if entry.default is None:
                if entry.wanted:  # (not unloaded on purpose through the API)
                    return False
                continue
            if any(s.state == UNAVAILABLE and s.reason != UNLOADED
                   for s in entry.versions.values()):
                return False
        return True

    def index(self, items: list[dict]) -> list[dict]:
        """The repository index with each lazily loadable model's state and reason."""
        why = self.residency.unloaded_because if self.residency is not None else {}
        idle = self.residency.idle_secs if self.residency is not None else 0.0
        out = []
        for item in items:
            name = item["name"]
            if "state" not in item:
                item = {"name": name, "state": UNAVAILABLE, "reason": NOT_LOADED}
            elif item.get("reason") == UNLOADED and name in why:
                item = dict(item, reason=_REASONS[why[name]].format(idle=idle))
            out.append(item)
        return out

    def waiting(self) -> dict[str, int]:
        with self._lock:
            return {n: len(p.waiters) + len(p.futures) for n, p in self._pending.items()
                    if p.waiters or p.futures}

    def gauges(self) -> dict[str, Any]:
        residency = self.residency
        out: dict[str, Any] = {"waiting": self.waiting()}
        if residency is not None:
            out["memory"] = residency.model_bytes()
            out["used"] = residency.in_use()
            out["limit"] = residency.limit

        return out
