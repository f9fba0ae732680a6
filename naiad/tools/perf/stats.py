"""Measurement results: client and server statistics of a window or of a level.

Field names and arithmetic follow perf_analyzer's ``PerfStatus``,
``ClientSideStats`` and ``ServerSideStats`` (integer nanoseconds; averages
truncated to microseconds when printed), so the printed numbers and CSV
columns mean what perf_analyzer's mean.
"""

from __future__ import annotations

import dataclasses
import math

PERCENTILES = (50, 90, 95, 99)

_SERVER_FIELDS = ("inference_count", "execution_count", "success_count", "queue_count",
                  "compute_input_count", "compute_infer_count", "compute_output_count",
                  "cumm_time_ns", "queue_time_ns", "compute_input_time_ns",
                  "compute_infer_time_ns", "compute_output_time_ns", "cache_hit_count",
                  "cache_hit_time_ns", "cache_miss_count", "cache_miss_time_ns")


@dataclasses.dataclass
class ServerStats:
    inference_count: int = 0
    execution_count: int = 0
    success_count: int = 0
    queue_count: int = 0
    compute_input_count: int = 0
    compute_infer_count: int = 0
    compute_output_count: int = 0
    cumm_time_ns: int = 0
    queue_time_ns: int = 0
    compute_input_time_ns: int = 0
    compute_infer_time_ns: int = 0
    compute_output_time_ns: int = 0
    cache_hit_count: int = 0
    cache_hit_time_ns: int = 0
    cache_miss_count: int = 0
    cache_miss_time_ns: int = 0
    composing: dict[tuple[str, str], ServerStats] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, stat: dict) -> ServerStats:
        s = stat.get("inference_stats", {})

        def c(key: str) -> int:
            return int((s.get(key) or {}).get("count", 0))

        def ns(key: str) -> int:
            return int((s.get(key) or {}).get("ns", 0))

        return cls(
            inference_count=int(stat.get("inference_count", 0)),
            execution_count=int(stat.get("execution_count", 0)),
            success_count=c("success"), queue_count=c("queue"),
            compute_input_count=c("compute_input"), compute_infer_count=c("compute_infer"),
            compute_output_count=c("compute_output"), cumm_time_ns=ns("success"),
            queue_time_ns=ns("queue"), compute_input_time_ns=ns("compute_input"),
            compute_infer_time_ns=ns("compute_infer"),
            compute_output_time_ns=ns("compute_output"), cache_hit_count=c("cache_hit"),
            cache_hit_time_ns=ns("cache_hit"), cache_miss_count=c("cache_miss"),
            cache_miss_time_ns=ns("cache_miss"))

    def minus(self, start: ServerStats | None) -> ServerStats:
        if start is None:
            return dataclasses.replace(self, composing={})
        return ServerStats(**{f: getattr(self, f) - getattr(start, f) for f in _SERVER_FIELDS})

    def plus(self, other: ServerStats) -> ServerStats:
        out = ServerStats(**{f: getattr(self, f) + getattr(other, f) for f in _SERVER_FIELDS})
        for key in set(self.composing) | set(other.composing):
            a, b = self.composing.get(key), other.composing.get(key)
            out.composing[key] = a.plus(b) if a and b else (a or b)
        return out

    # averages in microseconds, perf_analyzer's integer arithmetic
    @staticmethod
    def avg_us(total_ns: int, count: int) -> int:
        return total_ns // count // 1000 if count else 0

    @property
    def compute_time_ns(self) -> int:
        return self.compute_input_time_ns + self.compute_infer_time_ns + \
            self.compute_output_time_ns


@dataclasses.dataclass
class ClientStats:
    request_count: int = 0
    response_count: int = 0
    sequence_count: int = 0
    delayed_request_count: int = 0
    duration_ns: int = 0
    latencies: list[int] = dataclasses.field(default_factory=list)  # sorted, ns
    avg_latency_ns: int = 0
    std_us: int = 0
    percentile_latency_ns: dict[int, int] = dataclasses.field(default_factory=dict)
    completed_count: int = 0
    avg_request_time_ns: int = 0
    avg_send_time_ns: int = 0
    avg_receive_time_ns: int = 0
    infer_per_sec: float = 0.0
    responses_per_sec: float = 0.0
    sequence_per_sec: float = 0.0


@dataclasses.dataclass
class PerfStatus:
    concurrency: int = 0
    request_rate: float = 0.0
    batch_size: int = 1
    on_sequence_model: bool = False
    client: ClientStats = dataclasses.field(default_factory=ClientStats)
    server: ServerStats = dataclasses.field(default_factory=ServerStats)
    stabilizing_latency_ns: int = 0
    overhead_pct: float = 0.0  # client CPU use of the busiest load process, in % of a core
    client_cores: list[float] = dataclasses.field(default_factory=list)  # per process
    send_request_rate: float = 0.0
    # (start, end) of each window of the level, and the records of the level (export)
    windows: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    records: list[tuple] = dataclasses.field(default_factory=list)

    @property
    def level(self) -> float:
        return self.concurrency if self.concurrency else self.request_rate


def summarize_latency(latencies: list[int], client: ClientStats, percentile: int) -> int:
    """Mean, sample standard deviation and percentiles; returns the stabilizing latency."""
    n = len(latencies)
    if n == 0:
        raise ValueError("No valid requests recorded within time interval. Please use a "
                         "larger time window.")
    avg = sum(latencies) // n
    client.avg_latency_ns = avg
    if n > 1:
        sq = sum((x - avg) * (x - avg) for x in latencies)
        client.std_us = int(math.sqrt(sq / (n - 1)) / 1000)
    else:
        client.std_us = 2 ** 64 - 1
    wanted = set(PERCENTILES)
    if percentile != -1:
        wanted.add(percentile)
    client.percentile_latency_ns = {
        p: latencies[int((p / 100.0) * (n - 1) + 0.5)] for p in sorted(wanted)}
    if percentile != -1:
        return client.percentile_latency_ns[percentile]
    return avg
