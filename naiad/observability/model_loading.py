"""Metrics of models loaded on demand: loads, evictions, cold starts, memory in use.

Triton 2.51 has no metric for any of these (its model loads and unloads show
only in the log and the repository index), so the families carry naiad's
prefix. They exist when ``--model-load-on-demand`` is on; the repository's
``Residency`` and ``OnDemandLoader`` record into one ``ModelLoadingMetrics``
(a few dictionary updates per load or cold request, nothing per served
request) and the metrics endpoint reads it at scrape time:

- counter ``naiad_model_loads{model,outcome}``: model versions built
  (``success`` or ``failure``), whatever asked for them (startup, the
  repository API, a request, an ensemble's step);
- histogram ``naiad_model_load_duration_seconds{model}``: how long each
  successful version build took;
- counter ``naiad_model_evictions{model,reason}``: models unloaded to make
  room under ``--model-memory-limit`` (``memory``) or after
  ``--model-idle-unload-secs`` without requests (``idle``);
- counter ``naiad_cold_start_requests{model}``: requests that arrived while
  their model was not loaded and waited for its load;
- counter ``naiad_cold_start_failures{model,reason}``: those answered with an
  error instead (``load_failed``, ``timeout``, ``shutdown``);
- gauge ``naiad_cold_start_waiting_requests{model}``: requests waiting now;
- gauges ``naiad_model_memory_bytes{model}`` (each loaded model's footprint),
  ``naiad_model_memory_used_bytes`` (their sum, with the load in progress) and
  ``naiad_model_memory_limit_bytes`` (the limit; 0 when there is none).
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# seconds: python models load in tens of milliseconds, transformer sessions in seconds
LOAD_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

HELP = {
    "naiad_model_loads": "Number of model versions built, by outcome",
    "naiad_model_load_duration_seconds": "Time to build a model version, in seconds",
    "naiad_model_evictions": "Number of models unloaded to stay under the memory limit (memory) "
                             "or after being idle (idle)",
    "naiad_cold_start_requests": "Number of requests that waited for their model to load",
    "naiad_cold_start_failures": "Number of requests that waited for their model to load and "
                                 "failed, by reason",
    "naiad_cold_start_waiting_requests": "Instantaneous number of requests waiting for their "
                                         "model to load",
    "naiad_model_memory_bytes": "Memory held by a loaded model (all its versions), in bytes",
    "naiad_model_memory_used_bytes": "Memory held by loaded models and the load in progress, "
                                     "in bytes",
    "naiad_model_memory_limit_bytes": "The memory limit for loaded models, in bytes (0: none)",
}


class ModelLoadingMetrics(Collector):
    """Counters and the load-time histogram (any thread); gauges come from ``gauges``, a
    callable returning ``{"memory": {model: bytes}, "used": int, "limit": int,
    "waiting": {model: count}}``, read at scrape time."""

    def __init__(self, buckets: tuple[float, ...] = LOAD_BUCKETS):
        self._lock = threading.Lock()
        self.buckets = tuple(buckets)
        # (label values) -> count
        self.loads: dict[tuple[str, ...], int] = {}
        self.evictions: dict[tuple[str, ...], int] = {}
        self.cold: dict[tuple[str, ...], int] = {}
        self.cold_failures: dict[tuple[str, ...], int] = {}
        # model -> [count per bucket..., +Inf count, sum]
        self._durations: dict[str, list[float]] = {}
        self.gauges: Callable[[], dict[str, Any]] | None = None

    # -- recording ---------------------------------------------------------------------

    def load(self, model: str, seconds: float, ok: bool) -> None:
        with self._lock:
            self._count(self.loads, (model, "success" if ok else "failure"))
            if not ok:
                return
            row = self._durations.get(model)
            if row is None:
                row = self._durations[model] = [0.0] * (len(self.buckets) + 2)
            row[bisect.bisect_left(self.buckets, seconds)] += 1
            row[-1] += seconds

    def eviction(self, model: str, reason: str) -> None:
        with self._lock:
            self._count(self.evictions, (model, reason))

    def cold_start(self, model: str) -> None:
        with self._lock:
            self._count(self.cold, (model,))

    def cold_start_failure(self, model: str, reason: str) -> None:
        with self._lock:
            self._count(self.cold_failures, (model, reason))

    @staticmethod
    def _count(table: dict, key: tuple) -> None:
        table[key] = table.get(key, 0) + 1

    # -- collection ---------------------------------------------------------------------

    def collect(self) -> list[Metric]:
        with self._lock:
            counters = [("naiad_model_loads", ("model", "outcome"), dict(self.loads)),
                        ("naiad_model_evictions", ("model", "reason"), dict(self.evictions)),
                        ("naiad_cold_start_requests", ("model",), dict(self.cold)),
                        ("naiad_cold_start_failures", ("model", "reason"),
                         dict(self.cold_failures))]
            durations = {m: list(row) for m, row in self._durations.items()}
        out = []
        for name, labels, table in counters:
            fam = _family(name, "counter")
            for key, n in sorted(table.items()):
                fam.add_sample(name, dict(zip(labels, key)), n)
            out.append(fam)
        fam = _family("naiad_model_load_duration_seconds", "histogram")
        for model, row in sorted(durations.items()):
            cumulative = 0.0
            for bound, n in zip(self.buckets, row):
                cumulative += n
                fam.add_sample(fam.name + "_bucket", {"model": model, "le": floatToGoString(bound)},
                               cumulative)
            total = cumulative + row[len(self.buckets)]
            fam.add_sample(fam.name + "_bucket", {"model": model, "le": "+Inf"}, total)
            fam.add_sample(fam.name + "_count", {"model": model}, total)
            fam.add_sample(fam.name + "_sum", {"model": model}, row[-1])
        out.append(fam)
        gauges = self.gauges() if self.gauges is not None else {}
        fam = _family("naiad_cold_start_waiting_requests", "gauge")
        for model, n in sorted(gauges.get("waiting", {}).items()):
            fam.add_sample(fam.name, {"model": model}, n)
        out.append(fam)
        fam = _family("naiad_model_memory_bytes", "gauge")
        for model, n in sorted(gauges.get("memory", {}).items()):
            fam.add_sample(fam.name, {"model": model}, n)
        out.append(fam)
        for name, key in (("naiad_model_memory_used_bytes", "used"),
                          ("naiad_model_memory_limit_bytes", "limit")):
            fam = _family(name, "gauge")
            fam.add_sample(name, {}, int(gauges.get(key, 0)))
            out.append(fam)
        return out


def _family(name: str, kind: str) -> Metric:
    return Metric(name, HELP[name], kind)
