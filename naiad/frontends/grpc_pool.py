"""The gRPC server's thread pool: a few running threads, more only while some wait.

grpcio's synchronous server runs each RPC on a thread of the executor it is
given. Few threads is fastest here (with one core, more threads only trade
the GIL back and forth: DESIGN.md measured 4 as the sweet spot), but a fixed
small pool would cap the requests in flight at its size: a slow model, a
dynamic batcher waiting to fill a batch, a stream held open for minutes
would each pin a thread and starve everything else.

So the pool keeps ``core`` threads *runnable* and lets a thread that is about
to wait for something slow step aside (``with pool.waiting():``): while it
waits, another thread may start, so the runnable count stays at ``core``.
When the wait ends the extra thread finishes its RPC and, the pool being over
strength, exits. Waits that end quickly never get here (the caller first waits
a short while without stepping aside), so a fast model keeps the pool at
``core`` threads.

Some waits are not announced: a python model executing inline on the handler
thread (the core's inline execution) may sleep or block on a BLS call. A
watchdog covers those: while work is queued, it checks every
``STALL_CHECK_S``, and if no queued task started in that time it adds a
thread (which leaves again once the pool is over strength).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

log = logging.getLogger("naiad.grpc")

_STOP = None
# how long queued work may see no task start before the watchdog adds a thread
STALL_CHECK_S = 0.005


class ElasticPool(futures.ThreadPoolExecutor):
    """An executor with ``core`` runnable threads plus one per waiting thread.

    Subclasses ThreadPoolExecutor only so that grpcio accepts it wherever it
    checks for one; none of the parent's machinery is used.
    """

    def __init__(self, core: int = 4, max_threads: int = 1024, name: str = "naiad-grpc"):
        # the parent's state is never used, but keep it consistent and cheap
        super().__init__(max_workers=1, thread_name_prefix=name)
        self.core = max(1, core)
        self.max_threads = max(self.core, max_threads)
        self.name = name
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0  # live workers
        self._waiting = 0  # workers stepped aside in a long wait
        self._idle = 0  # workers blocked on the task queue
        self._seq = 0
        self._started = 0  # tasks started so far (the watchdog's sign of progress)
        self._stopped = False
        self._watch_wake = threading.Event()
        self._watchdog: threading.Thread | None = None

    # -- executor interface -------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> futures.Future:
        if self._stopped:
            raise RuntimeError("cannot schedule new work after shutdown")
        f: futures.Future = futures.Future()
        self._tasks.put((f, fn, args, kwargs))
        # start a worker when none is idle and fewer than `core` can run
        if self._idle == 0:
            with self._lock:
                if self._idle == 0 and self._threads - self._waiting < self.core:
                    self._spawn_locked()
                elif not self._watch_wake.is_set():
                    self._arm_watchdog_locked()
        return f

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._stopped = True
            n = self._threads
        if cancel_futures:
            while True:
                try:
                    item = self._tasks.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    item[0].cancel()
        for _ in range(n):
            self._tasks.put(_STOP)
        self._watch_wake.set()
        super().shutdown(wait=False)

    # -- stepping aside --------------------------------------------------------------

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Mark the calling thread as waiting (not runnable) for the block's duration."""
        with self._lock:
            self._waiting += 1
            if self._threads - self._waiting < self.core and self._idle == 0 \
                    and not self._tasks.empty():
                self._spawn_locked()
        try:
            yield
        finally:
            with self._lock:
                self._waiting -= 1

    def stats(self) -> dict[str, int]:
        return {"threads": self._threads, "waiting": self._waiting, "idle": self._idle}

    # -- the watchdog ----------------------------------------------------------------------

    def _arm_watchdog_locked(self) -> None:
        self._watch_wake.set()
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name=f"{self.name}-watchdog",
                                              daemon=True)
            self._watchdog.start()

    def _watch(self) -> None:
        wake = self._watch_wake
        tasks = self._tasks
        while not self._stopped:
            wake.wait()
            if self._stopped:
                return
            seen = self._started
            time.sleep(STALL_CHECK_S)
            with self._lock:
                if tasks.empty() or self._idle:
                    wake.clear()  # nothing waits: sleep until the next busy submit
                elif self._started == seen:
                    self._spawn_locked()

    # -- workers --------------------------------------------------------------------------

    def _spawn_locked(self) -> None:
        if self._threads >= self.max_threads or self._stopped:
            return
        self._threads += 1
        self._seq += 1
        t = threading.Thread(target=self._work, name=f"{self.name}-{self._seq}", daemon=True)
        try:
            t.start()
        except RuntimeError:  # the interpreter refuses more threads
            self._threads -= 1
            log.warning("gRPC pool: unable to start another thread (%d running)",
                        self._threads)

    def _work(self) -> None:
        tasks = self._tasks
        lock = self._lock
        while True:
            try:
                item = tasks.get_nowait()
            except queue.Empty:
                with lock:
                    self._idle += 1
                try:
                    item = tasks.get()
                finally:
                    with lock:
                        self._idle -= 1
            if item is _STOP:
                break
            f, fn, args, kwargs = item
            self._started += 1
            if f.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:  # noqa: BLE001 - handed to the future
                    f.set_exception(exc)
                else:
                    f.set_result(result)
            del item, f, fn, args, kwargs
            # over strength (a waiting thread came back): this one leaves
            if self._threads - self._waiting > self.core:
                with lock:
                    if self._threads - self._waiting > self.core:
                        self._threads -= 1
                        return
        with lock:
            self._threads -= 1
