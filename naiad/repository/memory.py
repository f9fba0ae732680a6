"""What a model version's load cost in memory: statistics' ``memory_usage``.

Neither onnxruntime's Python API nor a python model reports what it holds, so
the measure is the growth of the server's resident memory (its own plus its
worker processes', for ``EXECUTION_MODE: process``) while the version loaded:
backend model, instances (an onnxruntime session's initializers and the
arena it sets up; a python model's imports and ``initialize``) and warmup.
It is reported as Triton reports memory (``{"type": "CPU", "id": 0,
"byte_size": N}``) only when the growth can be attributed: when no other
version loaded at the same time in this process. A version that loaded beside
others (parallel loading at startup) reports nothing, as do versions whose
load did not grow the process (memory reused from earlier loads).
"""

from __future__ import annotations

import threading
from types import TracebackType

import psutil

_lock = threading.Lock()
_active: set["LoadMeter"] = set()


def _resident_bytes() -> int:
    proc = psutil.Process()
    total = proc.memory_info().rss
    try:
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass  # gone meanwhile
    except psutil.Error:
        pass
    return total


class LoadMeter:
    """``with LoadMeter() as meter: load(); meter.usage()`` — see the module's docstring."""

    def __init__(self) -> None:
        self.shared = False
        self.before = 0
        self.after = 0

    def __enter__(self) -> "LoadMeter":
        with _lock:
            for other in _active:
                other.shared = True
            self.shared = bool(_active)
            _active.add(self)
        self.before = _resident_bytes()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.after = _resident_bytes()
        with _lock:
            _active.discard(self)

    def usage(self) -> list[dict]:
        """Statistics' ``memory_usage`` entries for this load ([] when unattributable)."""
        grown = self.after - self.before
        if self.shared or grown <= 0:
            return []
        return [{"type": "CPU", "id": 0, "byte_size": grown}]
