"""A model instance: one backend execution context with its own worker thread.

Schedulers decide *what* an instance runs (one request, a batch, the next
step of a sequence); the instance runs it and hands the responses back to its
model.

Where it runs: normally on the instance's worker thread, so the network loop
never waits on a model. But a thread hand-off costs ~30 µs here (two wake-ups
and a GIL transfer), more than a small python model's whole ``execute``. So
an instance whose backend allows it (``BackendInstance.inline_capable``: the
python backend) may run a batch directly on the submitting thread when it is
idle and its recent executions were short.

The rules: an instance's first ``WARMUP_EXECUTIONS`` batches run on its
thread, and inline runs start only while the moving average of execution time
stays under ``INLINE_MAX_AVG_NS`` (so a model that sleeps or blocks never
holds the loop, not even once: its thread runs are timed by the wall clock).
Inline runs feed the average with their CPU time, which a busy core's
preemption does not inflate (a fast run's wall time bounds it; the thread's
CPU clock, a system call, is read only on the runs after one that looked
slow); two inline runs slower than ``INLINE_SLOW_NS`` by
the wall clock close together (one may be the machine preempting us) send the
instance back to its thread for a back-off period that doubles on each repeat. Batches
already queued for the instance run first when it goes inline, so order is
kept and two threads never take turns at the GIL over one model's queue.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from naiad.core.errors import Cancelled, NaiadError, as_naiad_error

if TYPE_CHECKING:
    from naiad.backends.base import BackendInstance, InstanceSpec
    from naiad.core.model import Model
    from naiad.core.types import InferenceRequest

log = logging.getLogger("naiad.instance")

INLINE_MAX_AVG_NS = 200_000
INLINE_SLOW_NS = 10_000_000
INLINE_BACKOFF_START_NS = 100_000_000
INLINE_BACKOFF_MAX_NS = 300_000_000_000
WARMUP_EXECUTIONS = 3
# queued batches an inline run takes over first
INLINE_DRAIN = 8
# slow inline runs (within a short history) that stop inline execution for a while
INLINE_SLOW_STRIKES = 2
# inline runs whose CPU time is measured after one looked slow by the wall clock
# (reading a thread's CPU clock is a system call: fast runs skip it)
CPU_CHECK_RUNS = 16


class ModelInstance:
    """Runs batches of requests on one backend instance."""

    def __init__(self, model: "Model", spec: "InstanceSpec", backend: "BackendInstance",
                 allow_inline: bool = True):
        self.model = model
        self.spec = spec
        self.name = spec.name
        self.backend = backend
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()  # held while a batch executes, wherever it runs
        self.executions = 0
        self.inline_runs = 0
        self.inline_enabled = bool(allow_inline and getattr(backend, "inline_capable", False))
        self._avg_ns = 0.0
        self._inline_blocked_until = 0
        self._backoff_ns = INLINE_BACKOFF_START_NS
        self._strikes = 0
        self._fast_runs = 0
        self._cpu_checks = 0  # inline runs left whose CPU time is measured
        # --rate-limit: this instance's claim on the server's resources (an
        # InstanceSlot of naiad.scheduling.rate_limiter), held while it executes
        self.rate_slot = None

    # -- where a batch runs -----------------------------------------------------

    def start(self, next_batch: Callable[[], "list[InferenceRequest] | None"]) -> None:
        """Start the worker thread; it runs ``next_batch()`` results until it gets None."""
        self.thread = threading.Thread(
            target=self._loop, args=(next_batch,), name=f"naiad-{self.name}", daemon=True
        )
        self.thread.start()

    def _loop(self, next_batch) -> None:
        lock = self.lock
        while True:
            batch = next_batch()
            if batch is None:
                break
            slot = self.rate_slot
            if slot is None:
                with lock:
                    self.run(batch, inline=False)
                continue
            slot.acquire()  # the rate limiter: run only while holding the resources
            try:
                with lock:
                    self.run(batch, inline=False)
            finally:
                slot.release()
        self._finalize()

    def inline_allowed(self) -> bool:
        # A new instance proves itself on its worker thread first: a model that
        # sleeps or blocks never gets to hold the loop, not even once.
        if not self.inline_enabled or self.executions < WARMUP_EXECUTIONS or \
                self._avg_ns > INLINE_MAX_AVG_NS:
            return False
        return not (self._inline_blocked_until and
                    time.monotonic_ns() < self._inline_blocked_until)

    def try_run_inline(self, batch: "list[InferenceRequest]",
                       queued: Callable[[], "list[InferenceRequest] | None"] | None = None) -> bool:
        """Run the batch on the calling thread if the instance is idle and cheap.

        ``queued`` returns batches already waiting for this instance (or None);
        up to INLINE_DRAIN of them run first, so order is kept and a backlog the
        worker thread started on is taken back by the submitting thread instead
        of two threads taking turns at the GIL.

        Returns False (nothing done) when the batch must go through the queue.
        """
        if not self.inline_allowed() or not self.lock.acquire(blocking=False):
            return False
        slot = self.rate_slot
        if slot is not None and not slot.try_acquire():
            self.lock.release()
            return False
        try:
            if queued is not None:
                for _ in range(INLINE_DRAIN):
                    earlier = queued()
                    if earlier is None:
                        break
                    self.inline_runs += 1
                    self.run(earlier, inline=True)
            self.inline_runs += 1
            self.run(batch, inline=True)
        finally:
            if slot is not None:
                slot.release()
            self.lock.release()
        return True

    # -- execution -------------------------------------------------------------------

    def run(self, requests: "list[InferenceRequest]", inline: bool = False) -> None:
        """Execute one batch and deliver its responses. Never raises.

        ``inline``: running on the submitting thread. See ``_observe`` for how
        each kind of run is timed.
        """
        for r in requests:
            if r.cancelled:
                requests = self._drop_cancelled(requests)
                if not requests:
                    return
                break
        model = self.model
        start = time.monotonic_ns()
        cpu_start = time.thread_time_ns() if inline and self._cpu_checks else 0
        for r in requests:
            r.compute_start_ns = start
        error: NaiadError | None = None
        responses = None
        try:
            responses = self.backend.execute(requests)
        except BaseException as exc:  # noqa: BLE001 - a model's failure must not kill the worker
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            error = as_naiad_error(exc)
            log.debug("model '%s' execute failed: %s", model.name, error)
        end = time.monotonic_ns()
        self.executions += 1
        if self.inline_enabled:
            if not inline:
                self._observe_threaded(end - start)
            elif cpu_start:
                self._cpu_checks -= 1
                self._observe(end - start, time.thread_time_ns() - cpu_start, end)
            elif end - start > INLINE_MAX_AVG_NS:
                # slow by the clock: preempted, or slow indeed? The next runs' CPU time tells
                self._cpu_checks = CPU_CHECK_RUNS
                self._observe(end - start, None, end)
            else:  # fast: the wall time bounds the CPU time, no clock call needed
                self._observe(end - start, end - start, end)
        first = requests[0]
        input_end = first.compute_input_end_ns or start
        output_start = first.compute_output_start_ns or end
        batch_size = 0
        for r in requests:
            batch_size += r.batch_size or 1
            if not r.compute_input_end_ns:
                r.compute_input_end_ns = input_end
            if not r.compute_output_start_ns:
                r.compute_output_start_ns = output_start
        model.stats.record_execution(requests, batch_size, start, input_end, output_start, end)
        if responses is None and error is None and not model.decoupled:
            error = NaiadError(f"model '{model.name}' execute() returned no responses")
        model.complete(requests, responses, error)

    def _drop_cancelled(self, requests: "list[InferenceRequest]") -> "list[InferenceRequest]":
        live = []
        for r in requests:
            if r.cancelled:
                if r.respond_error(Cancelled("request was cancelled")):
                    self.model.stats.record_request(r, False, time.monotonic_ns())
            else:
                live.append(r)
        return live

    def _observe_threaded(self, wall_ns: int) -> None:
        # Measured around execute() on the worker thread: the wait for the GIL
        # before the call is outside it, a model that sleeps or blocks is inside.
        avg = self._avg_ns
        self._avg_ns = wall_ns if avg == 0.0 else avg * 0.9 + wall_ns * 0.1

    def _observe(self, wall_ns: int, cpu_ns: int | None, now_ns: int) -> None:
        """Track an inline run for the inline decision.

        The average takes the run's CPU time: on a busy core the wall time of
        an inline run also holds time the thread was preempted or waited for
        the GIL, which says nothing about the model. The wall time only counts
        as a strike when it is long (``INLINE_SLOW_NS``); a model that blocks
        (sleeps, waits on I/O) shows it there, and so does a thread preempted
        long, which is why one strike alone is forgiven.
        """
        if cpu_ns is not None:  # None: not measured this time
            avg = self._avg_ns
            self._avg_ns = cpu_ns if avg == 0.0 else avg * 0.9 + cpu_ns * 0.1
        if wall_ns <= INLINE_SLOW_NS:
            self._fast_runs += 1
            if self._fast_runs >= 8:  # strikes fade after a run of fast executions
                self._fast_runs = 0
                self._strikes = max(0, self._strikes - 1)
            return
        self._strikes += 1
        if self._strikes < INLINE_SLOW_STRIKES:
            return
        self._strikes = 0
        if now_ns - self._inline_blocked_until > INLINE_BACKOFF_MAX_NS:
            self._backoff_ns = INLINE_BACKOFF_START_NS
        self._inline_blocked_until = now_ns + self._backoff_ns
        self._backoff_ns = min(self._backoff_ns * 2, INLINE_BACKOFF_MAX_NS)

    def _finalize(self) -> None:
        log.debug("instance '%s': %d executions, %d inline", self.name, self.executions,
                  self.inline_runs)
        slot = self.rate_slot
        if slot is not None:  # an unloaded instance no longer needs its resources
            self.rate_slot = None
            slot.limiter.unregister(slot)
        try:
            self.backend.finalize()
        except Exception:
            log.exception("finalize of instance '%s' failed", self.name)
