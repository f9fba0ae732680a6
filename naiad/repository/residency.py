"""Which models stay loaded: footprints, the memory budget, eviction, idle unloads.

With ``--model-load-on-demand`` a model that is unloaded comes back on its
next request, so the server may unload models to keep memory for the ones in
use. The data plane builds one ``Residency`` for its repository manager; every
version load then goes through ``load_versions`` (the manager's one hook):

* each loaded version's **footprint** is what the framework reports it holds
  (``BackendModel.memory_bytes``: torch, OpenVINO) or, when larger or when it
  cannot tell, the growth of the server's resident memory while the version
  loaded;
* with ``--model-memory-limit`` loads run one at a time (so each growth is the
  load's own), and before a load the least recently used **idle** models are
  unloaded until the model's expected footprint fits beside the others. A
  model is never chosen while requests are queued or executing on it
  (``Scheduler.busy``), while it loads or unloads, while a loaded model uses
  it (an ensemble's steps), when it is pinned (``--load-model``, or the config
  parameter ``NAIAD_PINNED: "true"``), or when it was loaded from files sent
  with the load request (it could not load again). If no model can go, the
  load waits for one to become idle (``--model-load-on-demand-timeout-secs``),
  then fails with a message saying why;
* with ``--model-idle-unload-secs`` a model unused for that long is unloaded
  by the same rules.

The expected footprint of a model is what it took when it last loaded; for a
model never loaded, the larger of its files' size and the largest footprint
seen for its backend.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import psutil

from naiad.core.errors import InvalidArgument, NaiadError, Unavailable
from naiad.core.files import folder_bytes
from naiad.options import parse_bool
from naiad.repository.memory import release_freed_memory, return_large_blocks_at_once
from naiad.repository.poll import PeriodicTask

if TYPE_CHECKING:
    from naiad.core.model import Model
    from naiad.observability.model_loading import ModelLoadingMetrics
    from naiad.protocol import model_config_pb2 as mc
    from naiad.repository.manager import ModelEntry, ModelRepositoryManager

log = logging.getLogger("naiad.repository")

# the config parameter that keeps a model loaded whatever the budget and idle time
PIN_PARAMETER = "NAIAD_PINNED"

# why a model was unloaded (metrics label, index reason)
MEMORY = "memory"
IDLE = "idle"

# Between refusing new requests and draining an evicted model: a request that
# looked the model up just before gets into its queue (and is served) rather
# than arriving after the drain.
EVICTION_GRACE_S = 0.01

# how often a load that found no model to evict looks again
_ROOM_POLL_S = 0.02

# Room a load leaves under the limit (a twentieth of it, at most 4 MiB) for what the
# server allocates while the load runs (requests served meanwhile), for a load's peak
# varying from one load to the next, and for the slow growth of the server's own heap.
HEADROOM_BYTES = 4 << 20


# -- the limit ----------------------------------------------------------------------------------


def machine_memory() -> int:
    """The memory the server may use: the machine's, or its container's limit if lower
    (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``)."""
    total = psutil.virtual_memory().total
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            return int(text)
    return total


def parse_memory_limit(text: str) -> int:
    """``--model-memory-limit``: bytes, or ``N%`` of ``machine_memory()``; 0 when empty.

    Raises InvalidArgument naming the flag.
    """
    text = str(text).strip()
    if not text:
        return 0
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, int(machine_memory() * pct / 100))
        value = int(text)
        if value <= 0:
            raise ValueError
        return value
    except ValueError:
        raise InvalidArgument(
            f"invalid value for --model-memory-limit: '{text}' (expected a number of bytes "
            "or a percentage of the machine's memory such as 25%)") from None


def pinned_by_config(config: mc.ModelConfig) -> bool:
    param = config.parameters.get(PIN_PARAMETER)
    return param is not None and parse_bool(param.string_value) is True


# -- residency ------------------------------------------------------------------------------------


class Residency:
    """The footprints of the loaded models and the decisions to unload some.

    ``limit``: bytes for loaded models (0: no budget); ``idle_secs``: unload a model
    unused for this long (0: never); ``wait_secs``: how long a load waits for a model
    to become evictable; ``pinned``: names never unloaded ("*": all).
    """

    def __init__(self, manager: ModelRepositoryManager, *, limit: int = 0,
                 idle_secs: float = 0.0, wait_secs: float = 120.0,
                 pinned: Iterable[str] = (), metrics: ModelLoadingMetrics | None = None):
        self.manager = manager
        self.limit = int(limit)
        self.idle_secs = float(idle_secs)
        self.wait_secs = float(wait_secs)
        self.pinned = frozenset(pinned)
        self.metrics = metrics
        self._bytes: weakref.WeakKeyDictionary[Model, int] = weakref.WeakKeyDictionary()
        self._loaded_ns: weakref.WeakKeyDictionary[Model, int] = weakref.WeakKeyDictionary()
        self._peaks: weakref.WeakKeyDictionary[Model, int] = weakref.WeakKeyDictionary()
        # name -> (footprint, peak while loading) when it last loaded
        self._known: dict[str, tuple[int, int]] = {}
        # backend -> (footprint, peak) of its last loads (the first one of a backend
        # also pays for the framework's own start)
        self._typical: dict[str, collections.deque[tuple[int, int]]] = {}
        # name -> what its backend reported it holds when it last loaded
        self._reported: dict[str, int] = {}
        self._reported_by: weakref.WeakKeyDictionary[Model, int] = weakref.WeakKeyDictionary()
        self._staged: list[Model] = []  # loaded by the load in progress, not yet published
        self.reserved = 0  # the expected footprint of the versions still loading
        # name -> why it was unloaded (MEMORY, IDLE), until it loads again
        self.unloaded_because: dict[str, str] = {}
        self._slot: asyncio.Lock | None = None
        self._freed = False  # memory was released since the last trim
        self._idle: PeriodicTask | None = None  # the idle sweep
        if self.limit:
            return_large_blocks_at_once()
        manager.residency = self
        manager.add_listener(self._on_change)

    def _on_change(self, name: str) -> None:
        entry = self.manager.models.get(name)
        if entry is not None and not entry.has_models():
            # (an unload through the API): trim before the next load
            self._freed = True

    # -- the manager's hook ------------------------------------------------------------

    async def load_versions(self, entry: ModelEntry, config: mc.ModelConfig,
                            versions: list[int],
                            build: Callable[[int], Awaitable[Model]]) -> list[Any]:
        """Build ``versions`` of ``entry`` (``build(v)``); each result is a Model or the
        exception its build raised, as the manager's gather returns them."""
        name = entry.name
        self.unloaded_because.pop(name, None)
        if not self.limit:  # no budget to keep: in parallel
            try:
                return list(await asyncio.gather(*[self._build(name, build, v, measure=False)
                                                   for v in versions]))
            finally:
                self._staged = []
        need = self.expected_footprint(name, config, entry.model_dir, versions)
        async with self._load_slot():
            try:
                if need > 0:  # (an ensemble holds nothing of its own)
                    await self._make_room(name, need)
            except NaiadError as exc:
                for _ in versions:
                    self._count_load(name, 0.0, False)
                return [exc for _ in versions]
            self.reserved = need
            try:
                await self._release_freed()
                results = []
                for v in versions:  # one at a time: each growth is the version's own
                    results.append(await self._build(name, build, v, measure=True))
                    self.reserved = max(0, need - sum(self._bytes.get(m, 0)
                                                      for m in self._staged))
                self.reserved = 0
                loaded = [m for m in results if not isinstance(m, BaseException)]
                if loaded:
                    total = sum(self._bytes.get(m, 0) for m in loaded)
                    peak = max(self._peaks.get(m, 0) for m in loaded)
                    self._known[name] = (total, peak)
                    self._reported[name] = sum(self._reported_by.get(m, 0) for m in loaded)
                    backend = config.backend or config.platform
                    self._typical.setdefault(backend, collections.deque(maxlen=8)).append(
                        (total, peak))
                    # it took more than expected: make the difference up now
                    await self._shrink(protect={name})
            finally:
                self.reserved = 0
                self._staged = []  # the manager publishes them before anything else runs
        return results

    async def _build(self, name: str, build: Callable[[int], Awaitable[Model]], version: int,
                     measure: bool) -> Any:
        start = time.monotonic()
        try:
            model = await build(version)
        except Exception as exc:  # noqa: BLE001 - the manager reports it for the version
            self._count_load(name, time.monotonic() - start, False)
            return exc
        self._count_load(name, time.monotonic() - start, True)
        # what the load cost, measured around it (the manager's LoadMeter, memory.py)
        meter = self.manager.load_costs.get(model)
        grown = peak = reported = 0
        if meter is not None:
            reported = meter.reported
            if not meter.shared:
                grown, peak = meter.grown, meter.peak
        self._bytes[model] = self._footprint(name, grown, reported)
        self._peaks[model] = max(peak, self._bytes[model])
        self._reported_by[model] = reported
        self._loaded_ns[model] = time.monotonic_ns()
        self._staged.append(model)
        if measure:
            log.info("model '%s' version %d holds %d bytes (%d at the peak of its load; "
                     "%d bytes of --model-memory-limit in use)", name, version,
                     self._bytes[model], self._peaks[model], self.in_use(),
                     extra={"model": name})
        return model

    def _footprint(self, name: str, grown: int, reported: int) -> int:
        value = max(grown, reported)
        if value <= 0:
            # nothing grew (the load reused memory another model freed, or it loaded
            # beside another one) and nothing reports a size: what it took last time
            value = self._known.get(name, (0, 0))[0]
        return value

    def _count_load(self, name: str, seconds: float, ok: bool) -> None:
        if self.metrics is not None:
            self.metrics.load(name, seconds, ok)

    # -- footprints ------------------------------------------------------------------------

    def expected_footprint(self, name: str, config: mc.ModelConfig, model_dir: str,
                           versions: list[int]) -> int:
        """What loading ``versions`` will take at its peak: the peak of its last load, or
        for a model never loaded the larger of its files' size and the largest peak
        seen for its backend."""
        known = self._known.get(name)
        if known:
            return known[1]
        files = sum(folder_bytes(os.path.join(model_dir, str(v))) for v in versions)
        recent = self._typical.get(config.backend or config.platform, ())
        return max([files] + [peak for _, peak in recent])

    def footprint(self, model: Model) -> int:
        return self._bytes.get(model, 0)

    def model_bytes(self) -> dict[str, int]:
        """name -> bytes held by its loaded versions (those with a measured footprint)."""
        out: dict[str, int] = {}
        for name, entry in list(self.manager.models.items()):
            held = [self._bytes.get(s.model, 0) for s in list(entry.versions.values())
                    if s.model is not None]
            if held:
                out[name] = sum(held)
        return out

    def in_use(self) -> int:
        """Bytes held by the loaded models, the ones just loaded and the load in progress."""
        published = 0
        seen = set()
        for entry in list(self.manager.models.values()):
            for s in list(entry.versions.values()):
                if s.model is not None:
                    seen.add(id(s.model))
                    published += self._bytes.get(s.model, 0)
        staged = sum(self._bytes.get(m, 0) for m in self._staged if id(m) not in seen)
        return published + staged + self.reserved

    # -- choosing what to unload -----------------------------------------------------------

    def is_pinned(self, name: str, models: list[Model]) -> bool:
        if "*" in self.pinned or name in self.pinned:
            return True
        return any(pinned_by_config(m.config) for m in models)

    def _needs_closure(self, names: Iterable[str]) -> set[str]:
        deps = self.manager.dependencies
        out: set[str] = set()
        todo = list(names)
        while todo:
            n = todo.pop()
            if n in out:
                continue
            out.add(n)
            todo.extend(deps.needs(n))
        return out

    def _protected(self, name: str | None = None) -> set[str]:
        """Models a load in progress may need: ``name``'s and every locked entry's, with
        what they need (an ensemble whose steps load one by one keeps the first ones)."""
        roots = [n for n, e in list(self.manager.models.items()) if e.lock.locked()]
        if name is not None:
            roots.append(name)
        return self._needs_closure(roots)

    def _last_used(self, name: str, models: list[Model], seen: set[str] | None = None) -> int:
        last = 0
        for m in models:
            last = max(last, m.stats.last_inference_ns, self._loaded_ns.get(m, 0))
        deps = self.manager.dependencies.needs(name)
        if deps and any(m.config.platform == "ensemble" for m in models):
            # an ensemble's own statistics record no executions: it was last used when
            # its steps were
            seen = (seen or set()) | {name}
            for dep in deps - seen:
                entry = self.manager.models.get(dep)
                if entry is not None:
                    last = max(last, self._last_used(dep, list(entry.ready.values()), seen))
        return last

    def candidates(self, protect: set[str]) -> list[tuple[int, str]]:
        """(last used, name) of every model that may be unloaded now, oldest first."""
        manager = self.manager
        out = []
        for name, entry in list(manager.models.items()):
            if name in protect or entry.lock.locked() or entry.source is None:
                continue
            held = [s for s in list(entry.versions.values()) if s.model is not None]
            if not held or any(s.state != "READY" for s in held):
                continue
            models = [s.model for s in held]
            if self.is_pinned(name, models):
                continue
            if manager.dependencies.users_of(name, self._loaded):
                continue
            if any(m.scheduler is not None and m.scheduler.busy() for m in models):
                continue
            out.append((self._last_used(name, models), name))
        out.sort()
        return out

    def _loaded(self, name: str) -> bool:
        entry = self.manager.models.get(name)
        return entry is not None and entry.has_models()

    async def _unload(self, name: str, reason: str) -> bool:
        before = self.model_bytes().get(name, 0)
        if not await self.manager.unload_idle(name, EVICTION_GRACE_S):
            return False
        self.unloaded_because[name] = reason
        self._freed = True
        if self.metrics is not None:
            self.metrics.eviction(name, reason)
        if reason == MEMORY:
            log.info("unloaded '%s' (%d bytes) to stay under --model-memory-limit", name,
                     before, extra={"model": name})
        else:
            log.info("unloaded '%s' after %g s without requests", name, self.idle_secs,
                     extra={"model": name})
        return True

    async def _release_freed(self) -> None:
        if self._freed:
            self._freed = False
            await asyncio.get_running_loop().run_in_executor(None, release_freed_memory)

    def _load_slot(self) -> asyncio.Lock:
        if self._slot is None:
            self._slot = asyncio.Lock()
        return self._slot

    async def _make_room(self, name: str, need: int) -> None:
        """Unload least recently used idle models until ``need`` more bytes fit."""
        if self._reported.get(name, 0) > self.limit:
            raise Unavailable(
                f"model '{name}' holds {self._reported[name]} bytes (as its backend reported "
                f"when it last loaded), more than --model-memory-limit allows ({self.limit} "
                "bytes)")
        deadline = time.monotonic() + self.wait_secs
        need += min(HEADROOM_BYTES, self.limit // 20)
        while self.in_use() + need > self.limit:
            victims = self.candidates(self._protected(name))
            if victims:
                await self._unload(victims[0][1], MEMORY)
                continue
            if self.in_use() == 0:
                return  # nothing else holds memory: the load alone goes over for a moment
            if time.monotonic() >= deadline or not self._may_free_up():
                raise Unavailable(
                    f"not enough memory to load model '{name}': it needs about {need} bytes, "
                    f"and {self.in_use()} of the {self.limit} bytes of --model-memory-limit "
                    "are held by models that are busy, pinned, loading or used by a loaded "
                    "ensemble")
            await asyncio.sleep(_ROOM_POLL_S)

    def _may_free_up(self) -> bool:
        """Whether a model that cannot be unloaded now may become unloadable: one busy,
        loading or unloading (the rest are pinned, or used by a model that is)."""
        for entry in list(self.manager.models.values()):
            if entry.lock.locked():
                return True
            for s in list(entry.versions.values()):
                if s.model is not None and s.model.scheduler is not None and \
                        s.model.scheduler.busy():
                    return True
        return False

    async def _shrink(self, protect: set[str]) -> None:
        """Back under the limit after a load that took more than expected (idle models
        only; no waiting)."""
        while self.in_use() > self.limit:
            victims = self.candidates(self._protected() | protect)
            if not victims or not await self._unload(victims[0][1], MEMORY):
                if self.in_use() > self.limit:
                    log.warning("models hold %d bytes, over --model-memory-limit (%d): no "
                                "idle model to unload now", self.in_use(), self.limit)
                return
        await self._release_freed()

    # -- idle unloads ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the idle sweep (on the event loop), if ``idle_secs`` is set."""
        if self.idle_secs > 0 and self._idle is None:
            self._idle = PeriodicTask("naiad-idle-unload", min(5.0, max(0.05, self.idle_secs / 4)),
                                      self.unload_idle_models, "idle unload failed")
            self._idle.start()

    async def stop(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None:
            await idle.stop()

    async def unload_idle_models(self) -> list[str]:
        """Unload every model unused for ``idle_secs``; returns their names."""
        done: list[str] = []
        tried: set[str] = set()
        async with self._load_slot():  # not while a load's growth is being measured
            cutoff = time.monotonic_ns() - int(self.idle_secs * 1e9)
            while True:
                idle = [n for last, n in self.candidates(self._protected())
                        if last < cutoff and n not in tried]
                if not idle:
                    break
                for name in idle:  # an ensemble first frees its steps for the next round
                    tried.add(name)
                    if await self._unload(name, IDLE):
                        done.append(name)
            await self._release_freed()
        return done
