"""Per-model-version statistics with Triton's fields (the statistics extension).

Durations are nanoseconds of a monotonic clock; ``last_inference`` is
milliseconds since the epoch, as in Triton. Recording happens on worker
threads, reading on the loop; one small lock guards each model's numbers.

The numbers add up the way Triton's do: ``inference_count`` is the
batch-weighted sum of executions, ``execution_count`` the number of backend
executions, and each batch size's ``batch_stats`` entry counts executions of
that size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from naiad.core.types import InferenceRequest


class Duration:
    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns

    def as_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


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


class BatchStat:
    __slots__ = ("compute_input", "compute_infer", "compute_output")

    def __init__(self) -> None:
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()


class ResponseStat:
    __slots__ = ("compute_infer", "compute_output", "success", "fail", "empty_response", "cancel")

    def __init__(self) -> None:
        for f in self.__slots__:
            setattr(self, f, Duration())


class ModelStatistics:
    """The statistics of one model version."""

    def __init__(self, name: str, version: int):
        self.name = name
        self.version = version
        self._lock = threading.Lock()
        self.last_inference_ms = 0
        self.inference_count = 0
        self.execution_count = 0
        self.infer = {f: Duration() for f in _INFER_FIELDS}
        self.batch: dict[int, BatchStat] = {}
        self.responses: dict[str, ResponseStat] = {}
        self.memory_usage: list[dict] = []
        # callbacks other subsystems (metrics) register to see each event
        self.listeners: list = []

    # -- recording (worker threads) ----------------------------------------

    def record_execution(self, requests: "Iterable[InferenceRequest]", batch_size: int,
                         start_ns: int, input_end_ns: int, output_start_ns: int,
                         end_ns: int) -> None:
        """One backend execution over ``requests`` whose batch sizes sum to batch_size."""
        with self._lock:
            self.execution_count += 1
            self.inference_count += batch_size
            b = self.batch.get(batch_size)
            if b is None:
                b = self.batch[batch_size] = BatchStat()
            b.compute_input.add(input_end_ns - start_ns)
            b.compute_infer.add(output_start_ns - input_end_ns)
            b.compute_output.add(end_ns - output_start_ns)
            self.last_inference_ms = int(time.time() * 1000)
        for listener in self.listeners:
            listener.on_execution(self, batch_size, start_ns, input_end_ns, output_start_ns,
                                  end_ns)

    def record_request(self, request: "InferenceRequest", ok: bool, end_ns: int) -> None:
        """A request finished (its final response was delivered)."""
        with self._lock:
            total = end_ns - request.arrival_ns
            if ok:
                self.infer["success"].add(total)
                cs = request.compute_start_ns
                if cs:
                    self.infer["queue"].add(cs - request.queue_start_ns)
                    ie = request.compute_input_end_ns or cs
                    os_ = request.compute_output_start_ns or ie
                    ce = request.compute_end_ns or os_
                    self.infer["compute_input"].add(ie - cs)
                    self.infer["compute_infer"].add(os_ - ie)
                    self.infer["compute_output"].add(ce - os_)
            else:
                self.infer["fail"].add(total)
        for listener in self.listeners:
            listener.on_request(self, request, ok, end_ns)

    def record_cache(self, hit: bool, ns: int) -> None:
        with self._lock:
            self.infer["cache_hit" if hit else "cache_miss"].add(ns)
            if hit:
                self.last_inference_ms = int(time.time() * 1000)

    def record_response(self, key: str, ok: bool, infer_ns: int, output_ns: int,
                        empty: bool = False, cancelled: bool = False) -> None:
        """A response of a decoupled model; ``key`` is its index in the request's stream."""
        with self._lock:
            stat = self.responses.get(key)
            if stat is None:
                stat = self.responses[key] = ResponseStat()
            stat.compute_infer.add(infer_ns)
            stat.compute_output.add(output_ns)
            if cancelled:
                stat.cancel.add(infer_ns + output_ns)
            elif empty:
                stat.empty_response.add(infer_ns + output_ns)
            elif ok:
                stat.success.add(infer_ns + output_ns)
            else:
                stat.fail.add(infer_ns + output_ns)

    # -- reading -----------------------------------------------------------

    def as_dict(self) -> dict:
        """Triton's JSON shape for one entry of ``model_stats``."""
        with self._lock:
            return {
                "name": self.name,
                "version": str(self.version),
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {f: self.infer[f].as_dict() for f in _INFER_FIELDS},
                "response_stats": {
                    k: {f: getattr(v, f).as_dict() for f in ResponseStat.__slots__}
                    for k, v in self.responses.items()
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": b.compute_input.as_dict(),
                        "compute_infer": b.compute_infer.as_dict(),
                        "compute_output": b.compute_output.as_dict(),
                    }
                    for size, b in sorted(self.batch.items())
                ],
                "memory_usage": list(self.memory_usage),
            }
