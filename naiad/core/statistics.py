"""Per-model-version statistics with Triton's fields (the statistics extension).

Durations are nanoseconds of a monotonic clock; ``last_inference`` is
milliseconds since the epoch, as in Triton. Recording happens on worker
threads (or inline on the submitting thread), reading on the loop or a
metrics scrape; one small lock guards each model's numbers.

The numbers add up the way Triton's do:

- ``inference_count`` is the batch-weighted count of *successful* requests
  (a failed request adds nothing, cached responses add nothing);
- ``execution_count`` is the number of backend executions, failed or not,
  and each batch size's ``batch_stats`` entry counts executions of that size;
  with no failures, ``inference_count`` equals the sum of
  ``batch_size * batch_stats[size].count``;
- ``success`` and ``fail`` count requests; ``queue`` and the three compute
  durations are recorded for successful requests only;
- every failure also lands in one of Triton's failure reasons (REJECTED,
  CANCELED, BACKEND, OTHER), which the metrics endpoint reports as the
  ``reason`` label of ``nv_inference_request_failure``.

This module sits on the per-request path: recording is a lock and a few
integer additions, with plain attributes instead of nested objects.
Prometheus metrics are read from these counters at scrape time
(``naiad.observability.metrics``), so serving metrics costs nothing per
request; only opt-in summaries and histograms register ``listeners`` that
see each request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from naiad.core.types import InferenceRequest, InferenceResponse

# Triton's failure reasons (metric label values of nv_inference_request_failure)
REJECTED = "REJECTED"  # refused by the scheduler: queue timeout, queue full
CANCELED = "CANCELED"  # cancelled before or while it ran
BACKEND = "BACKEND"  # the model/backend failed while executing it
OTHER = "OTHER"  # anything else
FAILURE_REASONS = (REJECTED, CANCELED, BACKEND, OTHER)

_INFER_FIELDS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)

_RESPONSE_FIELDS = ("compute_infer", "compute_output", "success", "fail", "empty_response",
                    "cancel")


def _duration(count: int, ns: int) -> dict:
    return {"count": count, "ns": ns}


class StatisticsListener:
    """What an opt-in observer (latency summaries, histograms) implements.

    Called outside the statistics lock, on the thread that recorded the event.
    """

    def on_request(self, stats: "ModelStatistics", request: "InferenceRequest", ok: bool,
                   end_ns: int) -> None:  # pragma: no cover - interface
        pass

    def on_response(self, stats: "ModelStatistics", request: "InferenceRequest", index: int,
                    now_ns: int) -> None:  # pragma: no cover - interface
        pass

    def on_cache(self, stats: "ModelStatistics", hit: bool, ns: int) -> None:
        pass  # pragma: no cover - interface


class ModelStatistics:
    """The statistics of one model version."""

    def __init__(self, name: str, version: int):
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        self.last_inference_ns = 0  # monotonic; converted to epoch ms when read
        self.inference_count = 0
        self.execution_count = 0
        self.success_count = 0
        self.success_ns = 0
        self.fail_count = 0
        self.fail_ns = 0
        self.queue_count = 0
        self.queue_ns = 0
        self.compute_count = 0
        self.compute_input_ns = 0
        self.compute_infer_ns = 0
        self.compute_output_ns = 0
        self.cache_hit_count = 0
        self.cache_hit_ns = 0
        self.cache_miss_count = 0
        self.cache_miss_ns = 0
        # failures by reason (FAILURE_REASONS order)
        self.fail_reasons = {r: 0 for r in FAILURE_REASONS}
        # batch size -> [executions, compute_input_ns, compute_infer_ns, compute_output_ns]
        self.batch: dict[int, list[int]] = {}
        # decoupled models: response index -> [count, ns] per _RESPONSE_FIELDS
        self.responses: dict[int, dict[str, list[int]]] = {}
        self._stream_state: dict[int, list[int]] = {}  # id(request) -> [next index, last ns]
        self.memory_usage: list[dict] = []
        # opt-in observers (StatisticsListener); empty unless summaries/histograms are on
        self.listeners: list[StatisticsListener] = []

    # -- recording (worker threads) ----------------------------------------

    def record_execution(self, requests: "Iterable[InferenceRequest]", batch_size: int,
                         start_ns: int, input_end_ns: int, output_start_ns: int,
                         end_ns: int) -> None:
        """One backend execution over ``requests`` whose batch sizes sum to batch_size."""
        with self._lock:
            self.execution_count += 1
            b = self.batch.get(batch_size)
            if b is None:
                b = self.batch[batch_size] = [0, 0, 0, 0]
            b[0] += 1
            b[1] += input_end_ns - start_ns
            b[2] += output_start_ns - input_end_ns
            b[3] += end_ns - output_start_ns
            self.last_inference_ns = end_ns

    def record_request(self, request: "InferenceRequest", ok: bool, end_ns: int,
                       reason: str | None = None) -> None:
        """A request finished (its final response was delivered).

        ``reason`` classifies a failure; when not given it is CANCELED for a
        cancelled request, BACKEND for one that reached its backend, OTHER
        otherwise. Schedulers pass REJECTED for requests they refuse after
        accepting them (queue timeouts).
        """
        total = end_ns - request.arrival_ns
        with self._lock:
            if ok:
                self.success_count += 1
                self.success_ns += total
                self.inference_count += request.batch_size or 1
                cs = request.compute_start_ns
                if cs:
                    self.queue_count += 1
                    self.queue_ns += cs - request.queue_start_ns
                    ie = request.compute_input_end_ns or cs
                    os_ = request.compute_output_start_ns or ie
                    ce = request.compute_end_ns or os_
                    self.compute_count += 1
                    self.compute_input_ns += ie - cs
                    self.compute_infer_ns += os_ - ie
                    self.compute_output_ns += ce - os_
            else:
                self.fail_count += 1
                self.fail_ns += total
                if reason is None:
                    if request.cancelled:
                        reason = CANCELED
                    elif request.compute_start_ns:
                        reason = BACKEND
                    else:
                        reason = OTHER
                self.fail_reasons[reason] = self.fail_reasons.get(reason, 0) + 1
        if self.listeners:
            for listener in self.listeners:
                listener.on_request(self, request, ok, end_ns)

    def record_cache_hit(self, request: "InferenceRequest", lookup_ns: int,
                         end_ns: int) -> None:
        """A request answered from the response cache (Triton's UpdateSuccessCacheHit).

        A success and a ``cache_hit`` (with the lookup time); no execution and
        no ``inference_count``, since the model did not run.
        """
        with self._lock:
            self.success_count += 1
            self.success_ns += end_ns - request.arrival_ns
            self.cache_hit_count += 1
            self.cache_hit_ns += lookup_ns
            self.last_inference_ns = end_ns
        if self.listeners:
            for listener in self.listeners:
                listener.on_cache(self, True, lookup_ns)
                listener.on_request(self, request, True, end_ns)

    def record_cache(self, hit: bool, ns: int) -> None:
        """A response-cache lookup (hit) or lookup-and-insert (miss) for this model."""
        with self._lock:
            if hit:
                self.cache_hit_count += 1
                self.cache_hit_ns += ns
                self.last_inference_ns = time.monotonic_ns()
            else:
                self.cache_miss_count += 1
                self.cache_miss_ns += ns
        if self.listeners:
            for listener in self.listeners:
                listener.on_cache(self, hit, ns)

    def record_stream_response(self, request: "InferenceRequest",
                               response: "InferenceResponse | None", final: bool,
                               start_ns: int, end_ns: int) -> None:
        """One response of a decoupled model, keyed by its index in the request's stream.

        ``compute_infer`` is the time from the start of execution (or the
        previous response) until this response was produced (``start_ns``);
        ``compute_output`` the time to shape and hand it over (``end_ns``).
        A final flag without a response counts as an empty response.
        """
        key = id(request)
        with self._lock:
            state = self._stream_state.get(key)
            if state is None:
                state = self._stream_state[key] = [0, request.compute_start_ns or start_ns]
            index = state[0]
            infer_ns = max(0, start_ns - state[1])
            output_ns = end_ns - start_ns
            state[0] = index + 1
            state[1] = end_ns
            if final:
                del self._stream_state[key]
            stat = self.responses.get(index)
            if stat is None:
                stat = self.responses[index] = {f: [0, 0] for f in _RESPONSE_FIELDS}
            if response is None or (response.error is None and not response.outputs):
                outcome = "empty_response"
            elif response.error is not None:
                outcome = "cancel" if request.cancelled else "fail"
            else:
                outcome = "success"
            d = stat["compute_infer"]
            d[0] += 1
            d[1] += infer_ns
            d = stat["compute_output"]
            d[0] += 1
            d[1] += output_ns
            d = stat[outcome]
            d[0] += 1
            d[1] += infer_ns + output_ns
        if self.listeners:
            for listener in self.listeners:
                listener.on_response(self, request, index, end_ns)

    # -- reading -----------------------------------------------------------

    @property
    def last_inference_ms(self) -> int:
        """Milliseconds since the epoch of the last inference (0: none yet)."""
        last = self.last_inference_ns
        if not last:
            return 0
        return (time.time_ns() - time.monotonic_ns() + last) // 1_000_000

    def snapshot(self) -> dict[str, Any]:
        """The raw counters, copied under the lock (for the metrics scrape)."""
        with self._lock:
            return {
                "success_count": self.success_count,
                "success_ns": self.success_ns,
                "fail_count": self.fail_count,
                "fail_reasons": dict(self.fail_reasons),
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "queue_ns": self.queue_ns,
                "compute_input_ns": self.compute_input_ns,
                "compute_infer_ns": self.compute_infer_ns,
                "compute_output_ns": self.compute_output_ns,
                "cache_hit_count": self.cache_hit_count,
                "cache_hit_ns": self.cache_hit_ns,
                "cache_miss_count": self.cache_miss_count,
                "cache_miss_ns": self.cache_miss_ns,
            }

    def as_dict(self) -> dict:
        """Triton's JSON shape for one entry of ``model_stats``."""
        with self._lock:
            return {
                "name": self.name,
                "version": str(self.version),
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": _duration(self.success_count, self.success_ns),
                    "fail": _duration(self.fail_count, self.fail_ns),
                    "queue": _duration(self.queue_count, self.queue_ns),
                    "compute_input": _duration(self.compute_count, self.compute_input_ns),
                    "compute_infer": _duration(self.compute_count, self.compute_infer_ns),
                    "compute_output": _duration(self.compute_count, self.compute_output_ns),
                    "cache_hit": _duration(self.cache_hit_count, self.cache_hit_ns),
                    "cache_miss": _duration(self.cache_miss_count, self.cache_miss_ns),
                },
                "response_stats": {
                    str(index): {f: _duration(*stat[f]) for f in _RESPONSE_FIELDS}
                    for index, stat in sorted(self.responses.items())
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": _duration(b[0], b[1]),
                        "compute_infer": _duration(b[0], b[2]),
                        "compute_output": _duration(b[0], b[3]),
                    }
                    for size, b in sorted(self.batch.items())
                ],
                "memory_usage": list(self.memory_usage),
            }
