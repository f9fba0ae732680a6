"""Triton's response cache: identical requests answered without executing the model.

Enabled on the server with ``--cache-config local,size=<bytes>`` (or the
deprecated ``--response-cache-byte-size``) and per model with
``response_cache { enable: true }``; one cache, bounded in bytes, shared by
every model, evicting the least recently used entry.

The key is a 128-bit BLAKE2b hash of the model name and version, every input
(name, datatype, shape, bytes) and, beyond Triton's key, the requested
outputs (with their classification counts) and the request parameters, so
two requests that differ only in what they ask back never share an entry.
Only successful responses are stored. A hit is answered at once on the
submitting thread and counted as a success and a ``cache_hit`` (with the
lookup time); a miss counts ``cache_miss`` with lookup plus insertion time,
as Triton reports them. Models with the sequence batcher and decoupled models
never use the cache (a decoupled model that enables it fails to load, as in
Triton).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

from naiad.core.errors import InvalidArgument
from naiad.core.scheduler import Scheduler
from naiad.core.types import InferenceResponse, Tensor
from naiad.scheduling.delivery import wrap_callback

if TYPE_CHECKING:
    from naiad.core.model import Model
    from naiad.core.types import InferenceRequest

_ENTRY_OVERHEAD = 128  # bytes charged per entry and per tensor besides the data
_monotonic_ns = time.monotonic_ns


def parse_cache_config(cache_config: dict[str, dict[str, str]]) -> int:
    """The local cache's size in bytes from ``--cache-config`` (0: no cache)."""
    if not cache_config:
        return 0
    for name in cache_config:
        if name != "local":
            raise InvalidArgument(
                f"unable to find cache implementation '{name}': naiad provides the 'local' "
                "response cache")
    settings = cache_config["local"]
    for key in settings:
        if key != "size":
            raise InvalidArgument(f"unknown 'local' cache setting '{key}' (expected 'size')")
    text = settings.get("size")
    if text is None:
        raise InvalidArgument("the 'local' cache needs a size: --cache-config local,size=<bytes>")
    try:
        size = int(text)
    except ValueError:
        raise InvalidArgument(f"--cache-config local,size must be an integer, got '{text}'") \
            from None
    if size <= 0:
        raise InvalidArgument(f"--cache-config local,size must be positive, got {size}")
    return size


def _response_bytes(response: InferenceResponse) -> int:
    total = _ENTRY_OVERHEAD
    for t in response.outputs:
        data = t.data
        if data.dtype == np.object_:
            total += sum(len(x) if isinstance(x, (bytes, str)) else 8 for x in data.flat)
        else:
            total += data.nbytes
        total += _ENTRY_OVERHEAD
    return total


class ResponseCache:
    """A bounded LRU of finished responses keyed on a hash of the request."""

    def __init__(self, size_bytes: int):
        self.capacity = size_bytes
        self.used = 0
        self._entries: OrderedDict[bytes, tuple[list, int]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(model: "Model", request: "InferenceRequest") -> bytes:
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{model.name}\0{model.version}\0".encode())
        for name in sorted(request.inputs):
            t = request.inputs[name]
            data = t.data
            h.update(f"{name}\0{t.datatype}\0{data.shape}\0".encode())
            if data.dtype == np.object_:
                for item in data.flat:
                    b = item if isinstance(item, bytes) else str(item).encode()
                    h.update(len(b).to_bytes(8, "little"))
                    h.update(b)
            else:
                h.update(np.ascontiguousarray(data).view(np.uint8).reshape(-1).data)
        wanted = request.requested_outputs
        if wanted:
            for name in sorted(wanted):
                h.update(f"out\0{name}\0{wanted[name].class_count}\0".encode())
        if request.parameters:
            h.update(repr(sorted(request.parameters.items())).encode())
        return h.digest()

    def lookup(self, key: bytes) -> list | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def insert(self, key: bytes, response: InferenceResponse) -> bool:
        size = _response_bytes(response)
        if size > self.capacity:
            return False
        # own copies: a view would keep a whole batch's output alive
        outputs = [Tensor(t.name, t.datatype, t.data.copy() if t.data.base is not None else t.data,
                          t.parameters) for t in response.outputs]
        with self._lock:
            if key in self._entries:
                return False
            while self.used + size > self.capacity and self._entries:
                _, (_, freed) = self._entries.popitem(last=False)
                self.used -= freed
            self._entries[key] = (outputs, size)
            self.used += size
        return True

    def __len__(self) -> int:
        return len(self._entries)


class CachingScheduler(Scheduler):
    """Puts the cache (``context.cache``) in front of a model's scheduler (default or
    dynamic batcher)."""

    def __init__(self, inner: Scheduler):
        super().__init__(inner.model, inner.instances, inner.context)
        self.inner = inner
        self.cache: ResponseCache = inner.context.cache
        self.can_resize = inner.can_resize

    @property  # type: ignore[override]
    def instances(self) -> list:
        return self.inner.instances

    @instances.setter
    def instances(self, value: list) -> None:
        pass  # the inner scheduler's list is the one

    def add_instances(self, instances: list) -> None:
        self.inner.add_instances(instances)

    async def remove_instances(self, instances: list) -> None:
        await self.inner.remove_instances(instances)

    def enqueue(self, request: "InferenceRequest") -> None:
        model = self.model
        cache = self.cache
        start = _monotonic_ns()
        key = cache.key(model, request)
        outputs = cache.lookup(key)
        lookup_ns = _monotonic_ns() - start
        if outputs is not None:
            response = InferenceResponse(outputs=list(outputs), model_name=model.name,
                                         model_version=model.version, id=request.id)
            if not request.responded:
                model.stats.record_cache_hit(request, lookup_ns, _monotonic_ns())
                request.respond(response, True)
            return

        def make(original):
            def on_response(response, final):
                if final and response is not None and response.error is None:
                    t0 = _monotonic_ns()
                    cache.insert(key, response)
                    model.stats.record_cache(False, lookup_ns + _monotonic_ns() - t0)
                original(response, final)
            return on_response

        wrap_callback(request, make)
        self.inner.enqueue(request)

    def queue_size(self) -> int:
        return self.inner.queue_size()

    def cancel(self, request: "InferenceRequest") -> None:
        self.inner.cancel(request)

    async def stop(self) -> None:
        await self.inner.stop()
