"""Generation metrics of the OpenAI frontend, on the server's ``/metrics`` page.

Recorded per request by the frontend (the core's per-model counters know
nothing of tokens), labelled ``model``:

======================================================  =========  ===================================
naiad name                                              type       Triton / vLLM backend counterpart
======================================================  =========  ===================================
``naiad_openai_time_to_first_token_seconds``            histogram  ``vllm:time_to_first_token_seconds``
``naiad_openai_inter_token_latency_seconds``            histogram  ``vllm:time_per_output_token_seconds``
``naiad_openai_output_tokens_per_second``               histogram  (genai-perf's output token throughput)
``naiad_openai_e2e_request_latency_seconds``            histogram  ``vllm:e2e_request_latency_seconds``
``naiad_openai_prompt_tokens_total``                    counter    ``vllm:prompt_tokens_total``
``naiad_openai_generation_tokens_total``                counter    ``vllm:generation_tokens_total``
``naiad_openai_requests_total`` (+ ``endpoint``,        counter    ``nv_inference_request_success`` /
``outcome`` = success or failure)                                  ``..._failure``
======================================================  =========  ===================================

Time to first token runs from the moment the request was accepted to the
first piece of text; inter-token latency is the time between consecutive
pieces of text of one choice; tokens per second is a request's output tokens
over the time from its first to its last token.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

from prometheus_client.core import Metric

TTFT = "naiad_openai_time_to_first_token_seconds"
ITL = "naiad_openai_inter_token_latency_seconds"
TPS = "naiad_openai_output_tokens_per_second"
E2E = "naiad_openai_e2e_request_latency_seconds"
PROMPT_TOKENS = "naiad_openai_prompt_tokens"
GENERATION_TOKENS = "naiad_openai_generation_tokens"
REQUESTS = "naiad_openai_requests"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0)
_TPS_BUCKETS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)
_E2E_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

HELP = {
    TTFT: "Time from accepting an OpenAI request to its first token, in seconds",
    ITL: "Time between consecutive tokens of one OpenAI completion choice, in seconds",
    TPS: "Output tokens per second of one OpenAI completion (first to last token)",
    E2E: "Duration of an OpenAI request from acceptance to its last byte, in seconds",
    PROMPT_TOKENS: "Number of prompt tokens processed by OpenAI requests",
    GENERATION_TOKENS: "Number of tokens generated for OpenAI requests",
    REQUESTS: "Number of OpenAI API requests by endpoint and outcome",
}


class _Histogram:
    __slots__ = ("buckets", "counts", "count", "sum")

    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.sum += value


class GenerationMetrics:
    """Thread-safe recorders plus a prometheus-client collector over them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hist: dict[str, dict[str, _Histogram]] = {TTFT: {}, ITL: {}, TPS: {}, E2E: {}}
        self._buckets = {TTFT: _LATENCY_BUCKETS, ITL: _LATENCY_BUCKETS, TPS: _TPS_BUCKETS,
                         E2E: _E2E_BUCKETS}
        self._counters: dict[str, dict[tuple, float]] = {PROMPT_TOKENS: {},
                                                          GENERATION_TOKENS: {}, REQUESTS: {}}

    # -- recording ------------------------------------------------------------------

    def _observe(self, family: str, model: str, value: float) -> None:
        series = self._hist[family].get(model)
        if series is None:
            series = self._hist[family][model] = _Histogram(self._buckets[family])
        series.observe(value)

    def record_generation(self, model: str, ttft_s: float | None, gaps_s: list[float],
                          prompt_tokens: int, output_tokens: int,
                          first_to_last_s: float | None) -> None:
        with self._lock:
            if ttft_s is not None:
                self._observe(TTFT, model, ttft_s)
            for gap in gaps_s:
                self._observe(ITL, model, gap)
            if first_to_last_s and output_tokens > 1 and first_to_last_s > 0:
                self._observe(TPS, model, (output_tokens - 1) / first_to_last_s)
            key = (model,)
            c = self._counters[PROMPT_TOKENS]
            c[key] = c.get(key, 0) + prompt_tokens
            c = self._counters[GENERATION_TOKENS]
            c[key] = c.get(key, 0) + output_tokens

    def record_embeddings(self, model: str, prompt_tokens: int) -> None:
        with self._lock:
            c = self._counters[PROMPT_TOKENS]
            c[(model,)] = c.get((model,), 0) + prompt_tokens

    def record_request(self, model: str, endpoint: str, ok: bool, duration_s: float) -> None:
        with self._lock:
            key = (model, endpoint, "success" if ok else "failure")
            c = self._counters[REQUESTS]
            c[key] = c.get(key, 0) + 1
            if ok:
                self._observe(E2E, model, duration_s)

    # -- collection (prometheus_client Collector protocol) ---------------------------------

    def collect(self) -> list[Metric]:
        out = []
        with self._lock:
            for family, series in self._hist.items():
                m = Metric(family, HELP[family], "histogram")
                for model, h in sorted(series.items()):
                    labels = {"model": model}
                    cumulative = 0
                    for bound, n in zip(h.buckets, h.counts):
                        cumulative += n
                        m.add_sample(family + "_bucket", {**labels, "le": _fmt(bound)},
                                     cumulative)
                    m.add_sample(family + "_bucket", {**labels, "le": "+Inf"}, h.count)
                    m.add_sample(family + "_count", labels, h.count)
                    m.add_sample(family + "_sum", labels, h.sum)
                out.append(m)
            for family, values in self._counters.items():
                m = Metric(family, HELP[family], "counter")
                for key, value in sorted(values.items()):
                    if family == REQUESTS:
                        labels = {"model": key[0], "endpoint": key[1], "outcome": key[2]}
                    else:
                        labels = {"model": key[0]}
                    m.add_sample(family + "_total", labels, value)
                out.append(m)
        return out


def _fmt(value: float) -> str:
    return repr(float(value))


def attach(server: Any, metrics: GenerationMetrics) -> bool:
    """Add the generation metrics to the server's ``/metrics`` page (if metrics are on)."""
    server_metrics = getattr(server, "metrics", None)
    registry = getattr(server_metrics, "registry", None)
    if registry is None:
        return False
    try:
        registry.register(metrics)
    except ValueError:  # already registered (a frontend restarted on the same server)
        pass
    return True


def detach(server: Any, metrics: GenerationMetrics) -> None:
    server_metrics = getattr(server, "metrics", None)
    registry = getattr(server_metrics, "registry", None)
    if registry is not None:
        try:
            registry.unregister(metrics)
        except KeyError:
            pass
