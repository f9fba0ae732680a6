"""What a model version's load cost in memory: statistics' ``memory_usage``.

The measure is the growth of the server's resident memory (its own plus its
worker processes', for ``EXECUTION_MODE: process``) while the version loaded:
backend model, instances (an onnxruntime session's initializers and the
arena it sets up; a python model's imports and ``initialize``) and warmup;
and, where the backend can tell, what it reports the version holds
(``BackendModel.memory_bytes``: the onnxruntime backend reports its weights'
size per session) when that is more. It is reported as Triton reports memory
(``{"type": "CPU", "id": 0, "byte_size": N}``). The growth counts only when it
can be attributed: when no other version loaded at the same time in this
process. A version that loaded beside others (parallel loading at startup)
reports its backend's figure or nothing, as do versions whose load did not
grow the process (memory reused from earlier loads).

A meter also keeps the load's **peak** (loaders read files and build copies
they drop again): the process's resident high-water mark, which Linux lets a
process start again from its current size. The memory budget
(``residency.py``) uses the growth and the peak, and the two helpers at the
end: ``release_freed_memory`` (garbage and free heap pages back to the
system, so that the next load's growth is its own) and
``return_large_blocks_at_once``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import psutil

_lock = threading.Lock()
_active: set["LoadMeter"] = set()


def resident_bytes(children: bool = True) -> int:
    """The server's resident memory: its own and (``children``) its worker processes'
    (finding them reads every process's status: a few milliseconds)."""
    proc = psutil.Process()
    total = proc.memory_info().rss
    if not children:
        return total
    try:
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass  # gone meanwhile
    except psutil.Error:
        pass
    return total


def _own_peak_bytes() -> int:
    """The process's resident high-water mark (Linux ``VmHWM``; 0 where unknown)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _reset_own_peak() -> bool:
    """Start the high-water mark again from the current size (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class LoadMeter:
    """``with LoadMeter() as meter: load(); meter.usage()`` — see the module's docstring.

    ``grown``: the growth while it ran; ``peak``: its highest point over the size at
    the start (``grown`` where the system keeps no high-water mark or another load
    ran at the same time); ``reported``: set by the caller to what the backend says
    the version holds.
    """

    def __init__(self, children: bool = True) -> None:
        # False: the load starts no worker process (its growth is the server's own)
        self.children = children
        self.shared = False
        self.before = 0
        self.after = 0
        self.peak = 0
        self.reported = 0
        self._own_before = 0
        self._peak_known = False

    def __enter__(self) -> "LoadMeter":
        with _lock:
            for other in _active:
                other.shared = True
            self.shared = bool(_active)
            _active.add(self)
        if not self.shared:
            self._peak_known = _reset_own_peak()
        self._own_before = psutil.Process().memory_info().rss
        self.before = resident_bytes(self.children)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.after = resident_bytes(self.children)
        self.peak = self.grown
        if self._peak_known and not self.shared:
            own_after = psutil.Process().memory_info().rss
            children = (self.after - own_after) - (self.before - self._own_before)
            self.peak = max(self.peak, _own_peak_bytes() - self._own_before + children)
        with _lock:
            _active.discard(self)

    @property
    def grown(self) -> int:
        return self.after - self.before

    def usage(self) -> list[dict]:
        """Statistics' ``memory_usage`` entries for this load ([] when unattributable)."""
        grown = 0 if self.shared else self.grown
        size = max(grown, self.reported)
        if size <= 0:
            return []
        return [{"type": "CPU", "id": 0, "byte_size": size}]


# -- giving memory back ------------------------------------------------------------------


def _libc() -> Any:
    if os.name != "posix":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()
_TRIM: Callable[[int], Any] | None = _LIBC.malloc_trim if _LIBC is not None else None


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc), so that the
    process's size shows what it holds and the next load's growth is its own."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)


def return_large_blocks_at_once() -> bool:
    """glibc: blocks of 1 MiB and more get their own mappings (returned to the system
    when freed), and a thread arena gives back free memory above 1 MiB at its top.

    By default glibc raises both thresholds as a process frees large blocks, and a
    thread arena's top is never trimmed by ``malloc_trim``: the memory of an unloaded
    model would stay in the process and the next model would grow into it unseen.
    Process-wide; returns whether it took effect.
    """
    if _LIBC is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    try:
        return bool(_LIBC.mallopt(m_mmap_threshold, 1 << 20)) and \
            bool(_LIBC.mallopt(m_trim_threshold, 1 << 20))
    except AttributeError:
        return False
