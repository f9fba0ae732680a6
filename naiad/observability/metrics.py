"""Prometheus metrics with Triton's names, help texts and labels.

Everything a Triton dashboard or autoscaler reads is here, computed at
*scrape time* from the per-model statistics counters
(``naiad.core.statistics``) by a prometheus-client custom collector:
serving requests costs nothing extra for metrics. Only the opt-in latency
summaries (``--metrics-config summary_latencies=true``) and the decoupled
first-response histogram (``histogram_latencies=true``) observe each request,
through statistics listeners that exist only when those are turned on.

Families (labels ``model`` and ``version``, as Triton sets them):

- counters ``nv_inference_request_success``, ``nv_inference_request_failure``
  (plus ``reason``: REJECTED, CANCELED, BACKEND, OTHER), ``nv_inference_count``,
  ``nv_inference_exec_count``, and the latency counters
  ``nv_inference_{request,queue,compute_input,compute_infer,compute_output}_duration_us``
  (``counter_latencies=false`` turns those off);
- gauge ``nv_inference_pending_request_count``: requests waiting in the
  model's scheduler (received, not yet executing);
- summaries ``nv_inference_*_summary_us`` with quantiles over a 60 s sliding
  window (``summary_quantiles=0.5:0.05,0.9:0.01,...``);
- histogram ``nv_inference_first_response_histogram_ms`` for decoupled models
  (buckets per model from ``model_metrics`` in config.pbtxt);
- response-cache counters for models with ``response_cache { enable: true }``;
- ``nv_cpu_utilization``, ``nv_cpu_memory_total_bytes``,
  ``nv_cpu_memory_used_bytes`` (``--allow-cpu-metrics``), polled at most once
  per ``--metrics-interval-ms``; ``nv_gpu_*`` through NVML when a GPU and the
  ``nvidia-ml-py`` package are present (``--allow-gpu-metrics``);
- custom metrics python models create with ``pb_utils.MetricFamily``.

The text exposition is rendered here rather than by
``prometheus_client.generate_latest``, which renames every counter to
``<name>_total``: Triton's counters have no such suffix, and dashboards query
them by their exact names.
"""

from __future__ import annotations

import bisect
import logging
import math
import random
import re
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client.core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from naiad.core.errors import InvalidArgument
from naiad.core.statistics import FAILURE_REASONS, ModelStatistics, StatisticsListener
from naiad.options import parse_bool

if TYPE_CHECKING:
    from naiad.core.types import InferenceRequest

log = logging.getLogger("naiad.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# family name -> help text, as Triton's metrics.cc registers them
HELP = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (does not include cached requests)",
    "nv_inference_exec_count":
        "Number of model executions performed (does not include cached requests)",
    "nv_inference_request_duration_us":
        "Cumulative inference request duration in microseconds (includes cached requests)",
    "nv_inference_queue_duration_us":
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
    "nv_inference_compute_input_duration_us":
        "Cumulative compute input duration in microseconds (does not include cached requests)",
    "nv_inference_compute_infer_duration_us":
        "Cumulative compute inference duration in microseconds (does not include cached "
        "requests)",
    "nv_inference_compute_output_duration_us":
        "Cumulative inference compute output duration in microseconds (does not include cached "
        "requests)",
    "nv_inference_pending_request_count":
        "Instantaneous number of pending requests awaiting execution per-model.",
    "nv_inference_request_summary_us":
        "Summary of inference request duration in microseconds (includes cached requests)",
    "nv_inference_queue_summary_us":
        "Summary of inference queuing duration in microseconds (includes cached requests)",
    "nv_inference_compute_input_summary_us":
        "Summary of compute input duration in microseconds (does not include cached requests)",
    "nv_inference_compute_infer_summary_us":
        "Summary of compute inference duration in microseconds (does not include cached "
        "requests)",
    "nv_inference_compute_output_summary_us":
        "Summary of inference compute output duration in microseconds (does not include cached "
        "requests)",
    "nv_inference_first_response_histogram_ms":
        "Duration from request to first response in milliseconds",
    "nv_cache_num_hits_per_model": "Number of cache hits per model",
    "nv_cache_hit_duration_per_model": "Total cache hit duration per model, in microseconds",
    "nv_cache_num_misses_per_model": "Number of cache misses per model",
    "nv_cache_miss_duration_per_model":
        "Total cache miss (insert+lookup) duration per model, in microseconds",
    "nv_pinned_memory_pool_total_bytes": "Pinned memory pool total memory size, in bytes",
    "nv_pinned_memory_pool_used_bytes": "Pinned memory pool used memory size, in bytes",
    "nv_cpu_utilization": "CPU utilization rate [0.0 - 1.0]",
    "nv_cpu_memory_total_bytes": "CPU total memory (RAM), in bytes",
    "nv_cpu_memory_used_bytes": "CPU used memory (RAM), in bytes",
    "nv_gpu_utilization": "GPU utilization rate [0.0 - 1.0)",
    "nv_gpu_memory_total_bytes": "GPU total memory, in bytes",
    "nv_gpu_memory_used_bytes": "GPU used memory, in bytes",
    "nv_gpu_power_usage": "GPU power usage in watts",
    "nv_gpu_power_limit": "GPU power management limit in watts",
    "nv_energy_consumption": "GPU energy consumption in joules since the Triton Server started",
}

_LATENCY_COUNTERS = (
    ("nv_inference_request_duration_us", "success_ns"),
    ("nv_inference_queue_duration_us", "queue_ns"),
    ("nv_inference_compute_input_duration_us", "compute_input_ns"),
    ("nv_inference_compute_infer_duration_us", "compute_infer_ns"),
    ("nv_inference_compute_output_duration_us", "compute_output_ns"),
)
_SUMMARIES = (
    "nv_inference_request_summary_us",
    "nv_inference_queue_summary_us",
    "nv_inference_compute_input_summary_us",
    "nv_inference_compute_infer_summary_us",
    "nv_inference_compute_output_summary_us",
)
FIRST_RESPONSE_HISTOGRAM = "nv_inference_first_response_histogram_ms"
DEFAULT_FIRST_RESPONSE_BUCKETS = (100.0, 500.0, 2000.0, 5000.0)
DEFAULT_QUANTILES = ((0.5, 0.05), (0.9, 0.01), (0.95, 0.001), (0.99, 0.001), (0.999, 0.001))
SUMMARY_MAX_AGE_S = 60.0
SUMMARY_AGE_BUCKETS = 5
SUMMARY_BUCKET_CAP = 20_000


# -- configuration --------------------------------------------------------------------


def _parse_bool(key: str, text: str) -> bool:
    value = parse_bool(text)
    if value is None:
        raise InvalidArgument(f"--metrics-config {key} expects true or false, got '{text}'")
    return value


class MetricsConfig:
    """``--metrics-config`` settings."""

    def __init__(self, settings: dict[str, str] | None = None):
        self.counter_latencies = True
        self.summary_latencies = False
        self.histogram_latencies = False
        self.quantiles: tuple[tuple[float, float], ...] = DEFAULT_QUANTILES
        for key, value in (settings or {}).items():
            if key == "counter_latencies":
                self.counter_latencies = _parse_bool(key, value)
            elif key == "summary_latencies":
                self.summary_latencies = _parse_bool(key, value)
            elif key == "histogram_latencies":
                self.histogram_latencies = _parse_bool(key, value)
            elif key == "summary_quantiles":
                self.quantiles = self._parse_quantiles(value)
            else:
                raise InvalidArgument(
                    f"unknown --metrics-config setting '{key}' (expected counter_latencies, "
                    "summary_latencies, histogram_latencies or summary_quantiles)")

    @staticmethod
    def _parse_quantiles(text: str) -> tuple[tuple[float, float], ...]:
        pairs = []
        for item in str(text).strip().strip('"').split(","):
            q, colon, err = item.strip().partition(":")
            try:
                qv, ev = float(q), float(err)
            except ValueError:
                qv = ev = math.nan
            if not colon or not (0.0 <= qv <= 1.0) or not (0.0 <= ev <= 1.0):
                raise InvalidArgument(
                    f"invalid --metrics-config summary_quantiles entry '{item}': expected "
                    "<quantile>:<error> with both in [0, 1]")
            pairs.append((qv, ev))
        return tuple(pairs)


# -- the text exposition ----------------------------------------------------------------


def _fmt(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return floatToGoString(value)


_LABEL_ESCAPES = str.maketrans({"\\": r"\\", "\n": r"\n", '"': r"\""})


def render(metrics: Iterable[Metric]) -> bytes:
    """Prometheus text format 0.0.4, keeping every family's and sample's own name."""
    out: list[str] = []
    for m in metrics:
        doc = m.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {m.name} {doc}\n# TYPE {m.name} {m.type}\n")
        for s in m.samples:
            if s.labels:
                labels = ",".join(f'{k}="{str(v).translate(_LABEL_ESCAPES)}"'
                                  for k, v in s.labels.items())
                out.append(f"{s.name}{{{labels}}} {_fmt(s.value)}\n")
            else:
                out.append(f"{s.name} {_fmt(s.value)}\n")
    return "".join(out).encode("utf-8")


def _family(name: str, kind: str, help_text: str | None = None) -> Metric:
    return Metric(name, help_text if help_text is not None else HELP[name], kind)


# -- per-request observers (opt-in) ---------------------------------------------------------


class _Window:
    """Observations of the last SUMMARY_MAX_AGE_S seconds, in rotating age buckets."""

    __slots__ = ("_buckets", "_span", "_current_start", "_seen")

    def __init__(self) -> None:
        self._span = SUMMARY_MAX_AGE_S / SUMMARY_AGE_BUCKETS
        self._buckets: list[tuple[float, list]] = []
        self._current_start = -math.inf
        self._seen = 0

    def add(self, now: float, values: tuple) -> None:
        if now - self._current_start >= self._span:
            self._current_start = now
            self._buckets.append((now, []))
            self._seen = 0
            cutoff = now - SUMMARY_MAX_AGE_S
            while self._buckets and self._buckets[0][0] < cutoff:
                self._buckets.pop(0)
        bucket = self._buckets[-1][1]
        self._seen += 1
        if len(bucket) < SUMMARY_BUCKET_CAP:
            bucket.append(values)
        else:  # reservoir sampling keeps the bucket an unbiased sample
            j = random.randrange(self._seen)
            if j < SUMMARY_BUCKET_CAP:
                bucket[j] = values

    def recent(self, now: float) -> list:
        cutoff = now - SUMMARY_MAX_AGE_S
        out: list = []
        for start, values in self._buckets:
            if start + self._span >= cutoff:
                out.extend(values)
        return out


class _ModelObserver(StatisticsListener):
    """The summaries and the first-response histogram of one model version."""

    def __init__(self, summaries: bool, histogram_buckets: tuple[float, ...] | None):
        self._lock = threading.Lock()
        self.summaries = summaries
        self.window = _Window()
        self.count = 0
        self.sums = [0, 0, 0, 0, 0]
        self.buckets = histogram_buckets
        self.bucket_counts = [0] * (len(histogram_buckets) + 1) if histogram_buckets else []
        self.hist_count = 0
        self.hist_sum = 0.0

    def on_request(self, stats: ModelStatistics, request: "InferenceRequest", ok: bool,
                   end_ns: int) -> None:
        if not ok or not self.summaries:
            return
        cs = request.compute_start_ns
        total = (end_ns - request.arrival_ns) // 1000
        if cs:
            ie = request.compute_input_end_ns or cs
            os_ = request.compute_output_start_ns or ie
            ce = request.compute_end_ns or os_
            values = (total, (cs - request.queue_start_ns) // 1000, (ie - cs) // 1000,
                      (os_ - ie) // 1000, (ce - os_) // 1000)
        else:
            values = (total, 0, 0, 0, 0)
        with self._lock:
            self.count += 1
            sums = self.sums
            sums[0] += values[0]
            sums[1] += values[1]
            sums[2] += values[2]
            sums[3] += values[3]
            sums[4] += values[4]
            self.window.add(end_ns / 1e9, values)

    def on_response(self, stats: ModelStatistics, request: "InferenceRequest", index: int,
                    now_ns: int) -> None:
        if index != 0 or self.buckets is None:
            return
        ms = (now_ns - request.arrival_ns) / 1e6
        with self._lock:
            self.bucket_counts[bisect.bisect_left(self.buckets, ms)] += 1
            self.hist_count += 1
            self.hist_sum += ms

    def summary_samples(self, quantiles) -> tuple[int, list[int], list[list[float]]]:
        """(count, sums, per-summary quantile values) at this moment."""
        now = time.monotonic_ns() / 1e9
        with self._lock:
            recent = self.window.recent(now)
            count, sums = self.count, list(self.sums)
        if not recent:
            return count, sums, [[math.nan] * len(quantiles) for _ in range(5)]
        # nearest-rank quantiles of each column, in one numpy pass
        values = np.quantile(np.asarray(recent, dtype=np.float64), [q for q, _ in quantiles],
                             axis=0, method="inverted_cdf")
        columns = [[float(v) for v in values[:, i]] for i in range(5)]
        return count, sums, columns


# -- system metrics ------------------------------------------------------------------------------


def _busy(t: Any) -> float:
    # as Triton reads /proc/stat: user + nice + system + irq + softirq + steal
    return (t.user + getattr(t, "nice", 0.0) + t.system + getattr(t, "irq", 0.0)
            + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0))


def _idle(t: Any) -> float:
    return t.idle + getattr(t, "iowait", 0.0)


class _CpuPoller:
    def __init__(self, interval_s: float):
        import psutil

        self._psutil = psutil
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._last_poll = 0.0
        self._last_times = psutil.cpu_times()
        self.utilization = 0.0
        self.total = 0
        self.used = 0
        self._poll(force=True)

    def _poll(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_poll < self.interval_s:
            return
        ps = self._psutil
        times = ps.cpu_times()
        prev = self._last_times
        d_busy = _busy(times) - _busy(prev)
        d_total = d_busy + _idle(times) - _idle(prev)
        if d_total > 0:
            self.utilization = max(0.0, min(1.0, d_busy / d_total))
        self._last_times = times
        mem = ps.virtual_memory()
        self.total = int(mem.total)
        self.used = int(mem.total - mem.available)
        self._last_poll = now

    def collect(self) -> list[Metric]:
        with self._lock:
            self._poll()
            util, total, used = self.utilization, self.total, self.used
        out = []
        for name, value in (("nv_cpu_utilization", util), ("nv_cpu_memory_total_bytes", total),
                            ("nv_cpu_memory_used_bytes", used)):
            m = _family(name, "gauge")
            m.add_sample(name, {}, value)
            out.append(m)
        return out


def _try(values: dict, key: str, read) -> None:
    try:
        values[key] = read()
    except Exception:  # a metric this GPU or driver does not report
        pass


class _GpuPoller:
    """GPU metrics through NVML (the nvidia-ml-py package), if there is a GPU."""

    def __init__(self, interval_s: float, nvml: Any = None):
        if nvml is None:
            import pynvml as nvml  # nvidia-ml-py
        self._nvml = nvml
        nvml.nvmlInit()
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._handles = []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = nvml.nvmlDeviceGetUUID(h)
            if isinstance(uuid, bytes):
                uuid = uuid.decode()
            try:
                energy0 = nvml.nvmlDeviceGetTotalEnergyConsumption(h)
            except Exception:
                energy0 = None
            self._handles.append((h, uuid, energy0))
        if not self._handles:
            raise RuntimeError("no GPU found")
        self._last_poll = 0.0
        self._values: list[dict] = []

    def _read(self) -> list[dict]:
        nvml = self._nvml
        out = []
        for h, uuid, energy0 in self._handles:
            v: dict[str, float] = {}
            _try(v, "nv_gpu_utilization",
                 lambda h=h: nvml.nvmlDeviceGetUtilizationRates(h).gpu / 100.0)
            _try(v, "nv_gpu_memory_total_bytes",
                 lambda h=h: float(nvml.nvmlDeviceGetMemoryInfo(h).total))
            _try(v, "nv_gpu_memory_used_bytes",
                 lambda h=h: float(nvml.nvmlDeviceGetMemoryInfo(h).used))
            _try(v, "nv_gpu_power_usage", lambda h=h: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0)
            _try(v, "nv_gpu_power_limit",
                 lambda h=h: nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
            if energy0 is not None:
                _try(v, "nv_energy_consumption",
                     lambda h=h, e0=energy0:
                     (nvml.nvmlDeviceGetTotalEnergyConsumption(h) - e0) / 1000.0)
            out.append({"uuid": uuid, "values": v})
        return out

    def collect(self) -> list[Metric]:
        with self._lock:
            now = time.monotonic()
            if not self._values or now - self._last_poll >= self.interval_s:
                self._values = self._read()
                self._last_poll = now
            values = self._values
        families = {}
        for name in ("nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes",
                     "nv_gpu_power_usage", "nv_gpu_power_limit", "nv_energy_consumption"):
            families[name] = _family(name, "counter" if name == "nv_energy_consumption"
                                     else "gauge")
        for gpu in values:
            for name, value in gpu["values"].items():
                families[name].add_sample(name, {"gpu_uuid": gpu["uuid"]}, value)
        return [m for m in families.values() if m.samples]


# -- custom metrics (pb_utils.MetricFamily) ------------------------------------------------------

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


class CustomMetricError(ValueError):
    """A misuse of the custom metrics API (pb_utils turns it into TritonModelException)."""


class _Series:
    __slots__ = ("labels", "value", "buckets", "bucket_counts", "count", "sum", "refs")

    def __init__(self, labels: tuple, buckets: tuple[float, ...] | None):
        self.labels = labels
        self.value = 0.0
        self.buckets = buckets
        self.bucket_counts = [0] * (len(buckets) + 1) if buckets is not None else None
        self.count = 0
        self.sum = 0.0
        self.refs = 0


class _CustomFamily:
    __slots__ = ("name", "description", "kind", "series", "refs", "lock")

    def __init__(self, name: str, description: str, kind: str):
        self.name = name
        self.description = description
        self.kind = kind
        self.series: dict[tuple, _Series] = {}
        self.refs = 0
        self.lock = threading.Lock()


class CustomMetrics:
    """The process's custom metric families, shared by every model that names them.

    Families and series live while some ``pb_utils`` handle refers to them,
    like Triton's: a second ``MetricFamily`` with the same name shares the
    first one's series (and keeps its description); the same labels share one
    value.
    """

    def __init__(self) -> None:
        self._families: dict[str, _CustomFamily] = {}
        self._lock = threading.Lock()

    def acquire_family(self, name: str, description: str, kind: str) -> _CustomFamily:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise CustomMetricError(f"invalid metric family name '{name}'")
        if name.startswith("nv_"):
            raise CustomMetricError(
                f"metric family name '{name}' is reserved: names starting with 'nv_' are "
                "Triton's")
        with self._lock:
            fam = self._families.get(name)
            if fam is None:
                fam = self._families[name] = _CustomFamily(name, str(description), kind)
            elif fam.kind != kind:
                raise CustomMetricError(
                    f"metric family '{name}' already exists with a different kind "
                    f"({fam.kind.upper()})")
            fam.refs += 1
            return fam

    def release_family(self, fam: _CustomFamily) -> None:
        with self._lock:
            fam.refs -= 1
            if fam.refs <= 0 and self._families.get(fam.name) is fam:
                del self._families[fam.name]

    def acquire_series(self, fam: _CustomFamily, labels: dict | None,
                       buckets: Iterable[float] | None) -> _Series:
        labels = dict(labels or {})
        for k, v in labels.items():
            if not isinstance(k, str) or not _LABEL_RE.match(k) or k.startswith("__"):
                raise CustomMetricError(f"invalid metric label name '{k}'")
            if not isinstance(v, str):
                raise CustomMetricError(f"the value of metric label '{k}' must be a string")
        b: tuple[float, ...] | None = None
        if fam.kind == HISTOGRAM:
            if buckets is None:
                raise CustomMetricError(
                    "histogram metric must specify 'buckets' in its arguments")
            b = tuple(float(x) for x in buckets)
            if any(b[i] >= b[i + 1] for i in range(len(b) - 1)):
                raise CustomMetricError("histogram buckets must be in strictly increasing order")
        elif buckets is not None:
            raise CustomMetricError(
                f"'buckets' can only be given for a histogram metric, not a {fam.kind}")
        key = tuple(sorted(labels.items()))
        with fam.lock:
            series = fam.series.get(key)
            if series is None:
                series = fam.series[key] = _Series(key, b)
            elif fam.kind == HISTOGRAM and series.buckets != b:
                raise CustomMetricError(
                    "a histogram metric with these labels already exists with other buckets")
            series.refs += 1
            return series

    def release_series(self, fam: _CustomFamily, series: _Series) -> None:
        with fam.lock:
            series.refs -= 1
            if series.refs <= 0 and fam.series.get(series.labels) is series:
                del fam.series[series.labels]

    # value operations (kind checks happen in pb_utils, where the messages live)
    def increment(self, fam: _CustomFamily, series: _Series, value: float) -> None:
        with fam.lock:
            series.value += value

    def set(self, fam: _CustomFamily, series: _Series, value: float) -> None:
        with fam.lock:
            series.value = value

    def observe(self, fam: _CustomFamily, series: _Series, value: float) -> None:
        with fam.lock:
            series.bucket_counts[bisect.bisect_left(series.buckets, value)] += 1
            series.count += 1
            series.sum += value

    def collect(self) -> list[Metric]:
        with self._lock:
            families = list(self._families.values())
        out = []
        for fam in families:
            m = _family(fam.name, fam.kind, fam.description)
            with fam.lock:
                for s in fam.series.values():
                    labels = dict(s.labels)
                    if fam.kind != HISTOGRAM:
                        m.add_sample(fam.name, labels, s.value)
                        continue
                    m.add_sample(fam.name + "_count", labels, s.count)
                    m.add_sample(fam.name + "_sum", labels, s.sum)
                    cumulative = 0
                    for bound, n in zip(s.buckets, s.bucket_counts):
                        cumulative += n
                        m.add_sample(fam.name + "_bucket", {**labels, "le": _fmt(bound)},
                                     cumulative)
                    m.add_sample(fam.name + "_bucket", {**labels, "le": "+Inf"}, s.count)
            out.append(m)
        return out


# The process's custom metrics: python models create families without knowing
# which server they run in, and Triton's are process-wide too.
CUSTOM_METRICS = CustomMetrics()


# -- the server's metrics ------------------------------------------------------------------------


class _Collector(Collector):
    def __init__(self, metrics: "ServerMetrics"):
        self._metrics = metrics

    def collect(self):
        return self._metrics.collect()


class ServerMetrics:
    """All metrics of one server: what the metrics endpoint renders."""

    def __init__(self, server: Any, custom: CustomMetrics | None = None, gpu_nvml: Any = None):
        opts = server.options
        self.server = server
        self.config = MetricsConfig(opts.metrics_config)
        self.custom = custom if custom is not None else CUSTOM_METRICS
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self._observed_lock = threading.Lock()
        interval_s = max(0.0, float(opts.metrics_interval_ms) / 1000.0)
        self.cpu: _CpuPoller | None = None
        self.gpu: _GpuPoller | None = None
        self._interval_s = interval_s
        self._gpu_nvml = gpu_nvml
        self._started = False
        self._per_request = self.config.summary_latencies or self.config.histogram_latencies
        if self._per_request:
            server.manager.add_listener(self._on_model_change)

    def start(self) -> None:
        """Begin the system metric polling (when the endpoint starts)."""
        if self._started:
            return
        self._started = True
        opts = self.server.options
        if opts.allow_cpu_metrics:
            try:
                self.cpu = _CpuPoller(self._interval_s)
            except Exception as exc:  # pragma: no cover - psutil missing or /proc unreadable
                log.warning("CPU metrics are not available: %s", exc)
            else:
                log.info("Collecting CPU metrics")
        if opts.allow_gpu_metrics:
            try:
                self.gpu = _GpuPoller(self._interval_s, self._gpu_nvml)
            except Exception as exc:
                log.debug("GPU metrics are not available: %s", exc)
            else:
                log.info("Collecting metrics for GPU(s)")
        if self._per_request:
            for entry in list(self.server.manager.models.values()):
                for model in list(entry.ready.values()):
                    self._observe(model)

    # -- opt-in per-request observation ------------------------------------------------

    def _on_model_change(self, name: str) -> None:
        entry = self.server.manager.models.get(name)
        if entry is None:
            return
        for model in list(entry.ready.values()):
            self._observe(model)

    def _observe(self, model: Any) -> None:
        stats: ModelStatistics = model.stats
        with self._observed_lock:
            if any(isinstance(x, _ModelObserver) for x in stats.listeners):
                return
            buckets = None
            if self.config.histogram_latencies and model.decoupled:
                buckets = DEFAULT_FIRST_RESPONSE_BUCKETS
                for control in model.config.model_metrics.metric_control:
                    if control.metric_identifier.family == FIRST_RESPONSE_HISTOGRAM and \
                            control.HasField("histogram_options"):
                        buckets = tuple(sorted(set(control.histogram_options.buckets)))
            if not self.config.summary_latencies and buckets is None:
                return
            observer = _ModelObserver(self.config.summary_latencies, buckets)
            stats.listeners.append(observer)

    # -- collection ------------------------------------------------------------------------

    def _models(self) -> list[Any]:
        # runs off the loop while models may load or unload: iterate over snapshots
        # (each entry's version table is replaced as a whole, never edited in place)
        out = []
        for _, entry in sorted(list(self.server.manager.models.items())):
            out += [model for _, model in sorted(list(entry.ready.items()))]
        return out

    def collect(self) -> list[Metric]:
        cfg = self.config
        models = self._models()
        success = _family("nv_inference_request_success", "counter")
        failure = _family("nv_inference_request_failure", "counter")
        count = _family("nv_inference_count", "counter")
        exec_count = _family("nv_inference_exec_count", "counter")
        latency = [(_family(name, "counter"), key) for name, key in _LATENCY_COUNTERS]
        pending = _family("nv_inference_pending_request_count", "gauge")
        cache = [_family(n, "counter") for n in (
            "nv_cache_num_hits_per_model", "nv_cache_hit_duration_per_model",
            "nv_cache_num_misses_per_model", "nv_cache_miss_duration_per_model")]
        summaries = [_family(n, "summary") for n in _SUMMARIES]
        histogram = _family(FIRST_RESPONSE_HISTOGRAM, "histogram")
        for model in models:
            labels = {"model": model.name, "version": str(model.version)}
            snap = model.stats.snapshot()
            success.add_sample(success.name, labels, snap["success_count"])
            for reason in FAILURE_REASONS:
                failure.add_sample(failure.name,
                                   {"model": model.name, "reason": reason,
                                    "version": labels["version"]},
                                   snap["fail_reasons"].get(reason, 0))
            count.add_sample(count.name, labels, snap["inference_count"])
            exec_count.add_sample(exec_count.name, labels, snap["execution_count"])
            if cfg.counter_latencies:
                for fam, key in latency:
                    fam.add_sample(fam.name, labels, snap[key] // 1000)
            scheduler = model.scheduler
            queued = 0
            if scheduler is not None:
                try:
                    queued = int(scheduler.queue_size())
                except Exception:
                    queued = 0
            pending.add_sample(pending.name, labels, max(0, queued))
            if cfg.counter_latencies and model.config.response_cache.enable:
                for fam, value in zip(cache, (snap["cache_hit_count"], snap["cache_hit_ns"] // 1000,
                                              snap["cache_miss_count"],
                                              snap["cache_miss_ns"] // 1000)):
                    fam.add_sample(fam.name, labels, value)
            observer = next((x for x in model.stats.listeners
                             if isinstance(x, _ModelObserver)), None)
            if observer is None:
                continue
            if observer.summaries:
                n, sums, columns = observer.summary_samples(cfg.quantiles)
                for fam, total, qs in zip(summaries, sums, columns):
                    fam.add_sample(fam.name + "_count", labels, n)
                    fam.add_sample(fam.name + "_sum", labels, total)
                    for (q, _), value in zip(cfg.quantiles, qs):
                        fam.add_sample(fam.name, {**labels, "quantile": _fmt(q)}, value)
            if observer.buckets is not None:
                with observer._lock:
                    counts = list(observer.bucket_counts)
                    hn, hs = observer.hist_count, observer.hist_sum
                histogram.add_sample(histogram.name + "_count", labels, hn)
                histogram.add_sample(histogram.name + "_sum", labels, hs)
                cumulative = 0
                for bound, c in zip(observer.buckets, counts):
                    cumulative += c
                    histogram.add_sample(histogram.name + "_bucket",
                                         {**labels, "le": _fmt(bound)}, cumulative)
                histogram.add_sample(histogram.name + "_bucket", {**labels, "le": "+Inf"}, hn)
        out = [success, failure, count, exec_count]
        if cfg.counter_latencies:
            out += [fam for fam, _ in latency]
        out.append(pending)
        out += [fam for fam in cache if fam.samples]
        out += [fam for fam in summaries if fam.samples]
        if histogram.samples:
            out.append(histogram)
        pinned_total = _family("nv_pinned_memory_pool_total_bytes", "gauge")
        pinned_total.add_sample(pinned_total.name, {},
                                int(self.server.options.pinned_memory_pool_byte_size))
        pinned_used = _family("nv_pinned_memory_pool_used_bytes", "gauge")
        pinned_used.add_sample(pinned_used.name, {}, 0)
        out += [pinned_total, pinned_used]
        if self.cpu is not None:
            out += self.cpu.collect()
        if self.gpu is not None:
            try:
                out += self.gpu.collect()
            except Exception as exc:  # pragma: no cover - driver trouble mid-run
                log.warning("reading GPU metrics failed: %s", exc)
        out += self.custom.collect()
        return out

    def render(self) -> bytes:
        return render(self.registry.collect())
