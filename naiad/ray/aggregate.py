"""One answer from many replicas: statistics and Prometheus metrics summed across them.

Pure functions (no Ray): the coordinator gathers each replica's
``model_statistics`` dict or ``/metrics`` text and these merge them.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from naiad.observability.metrics import render

# counters in a model_stats entry that add up across replicas
_SUMMED = ("inference_count", "execution_count")


def _add_duration(into: dict, other: dict) -> None:
    into["count"] = int(into.get("count", 0)) + int(other.get("count", 0))
    into["ns"] = int(into.get("ns", 0)) + int(other.get("ns", 0))


def _add_durations(into: dict, other: dict) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and "count" in value:
            _add_duration(into.setdefault(key, {"count": 0, "ns": 0}), value)


def merge_statistics(per_replica: Iterable[dict]) -> dict:
    """Sum Triton ``{"model_stats": [...]}`` answers entry by entry (model, version).

    Counts and nanoseconds add up; ``last_inference`` is the latest of them;
    batch statistics add up per batch size, response statistics per index.
    Entries keep the order of the first replica that reports them.
    """
    merged: dict[tuple[str, str], dict] = {}
    for answer in per_replica:
        for entry in answer.get("model_stats", []):
            key = (entry["name"], str(entry["version"]))
            into = merged.get(key)
            if into is None:
                into = merged[key] = {
                    "name": entry["name"], "version": str(entry["version"]),
                    "last_inference": 0, "inference_count": 0, "execution_count": 0,
                    "inference_stats": {}, "response_stats": {}, "batch_stats": [],
                    "memory_usage": list(entry.get("memory_usage", [])),
                }
            into["last_inference"] = max(int(into["last_inference"]),
                                         int(entry.get("last_inference", 0)))
            for field in _SUMMED:
                into[field] = int(into[field]) + int(entry.get(field, 0))
            _add_durations(into["inference_stats"], entry.get("inference_stats", {}))
            for index, stats in entry.get("response_stats", {}).items():
                _add_durations(into["response_stats"].setdefault(str(index), {}), stats)
            by_size = {b["batch_size"]: b for b in into["batch_stats"]}
            for batch in entry.get("batch_stats", []):
                have = by_size.get(batch["batch_size"])
                if have is None:
                    have = {"batch_size": batch["batch_size"]}
                    into["batch_stats"].append(have)
                    by_size[batch["batch_size"]] = have
                _add_durations(have, batch)
        # (a replica's memory_usage describes its own process: the first one is kept)
    for entry in merged.values():
        entry["batch_stats"].sort(key=lambda b: b["batch_size"])
    return {"model_stats": list(merged.values())}


def _families(text: str) -> list[Metric]:
    """Parsed families, with samples named as in the text.

    prometheus-client's parser names every counter sample ``<family>_total``;
    Triton's counters have no such suffix and dashboards query them by their
    exact names, so the suffix is dropped again where the text had none.
    """
    families = list(text_string_to_metric_families(text))
    for family in families:
        if family.type != "counter":
            continue
        suffixed = family.name + "_total"
        if ("\n" + suffixed) in text or text.startswith(suffixed):
            continue
        family.samples = [s._replace(name=family.name) if s.name == suffixed else s
                          for s in family.samples]
    return families


def label_replicas(per_replica: dict[str, str]) -> bytes:
    """Every replica's series in one page, each with a ``replica`` label."""
    out: dict[str, Metric] = {}
    for replica, text in per_replica.items():
        for family in _families(text):
            into = out.get(family.name)
            if into is None:
                into = out[family.name] = Metric(family.name, family.documentation, family.type)
            for s in family.samples:
                labels = dict(s.labels)
                labels["replica"] = replica
                into.add_sample(s.name, labels, s.value)
    return render(out.values())


# families whose sum across replicas means nothing: their mean is shown instead
_AVERAGED = ("nv_cpu_utilization", "nv_gpu_utilization", "nv_gpu_power_usage")


def sum_replicas(per_replica: dict[str, str]) -> bytes:
    """One page as if one server had served everything: samples with equal labels add up.

    Counters, histogram buckets and sums, and gauges such as the pending
    request count are totals over the replicas; quantiles of summaries cannot
    be combined, so summaries keep only their ``_sum`` and ``_count``;
    utilization ratios are averaged.
    """
    order: list[str] = []
    kinds: dict[str, tuple[str, str]] = {}
    values: dict[str, dict[tuple[str, tuple], list[float]]] = {}
    for text in per_replica.values():
        for family in _families(text):
            if family.name not in kinds:
                order.append(family.name)
                kinds[family.name] = (family.documentation, family.type)
                values[family.name] = {}
            for s in family.samples:
                if family.type == "summary" and "quantile" in s.labels:
                    continue
                key = (s.name, tuple(sorted(s.labels.items())))
                values[family.name].setdefault(key, []).append(s.value)
    out = []
    for name in order:
        doc, kind = kinds[name]
        metric = Metric(name, doc, kind)
        for (sample, labels), vals in values[name].items():
            total = sum(vals)
            if name in _AVERAGED:
                total /= len(vals)
            metric.add_sample(sample, dict(labels), total)
        out.append(metric)
    return render(out)


def queue_us_per_request(before: dict | None, after: dict) -> float | None:
    """Mean queue time (µs) of the requests executed between two statistics snapshots.

    The sum of queue time over *all* models divided by the number of requests
    that waited (the queue counts, summed): weighted by traffic, so idle
    models do not dilute it. None when no request ran in between.
    """
    def totals(stats: dict | None) -> tuple[int, int]:
        ns = count = 0
        for entry in (stats or {}).get("model_stats", []):
            queue = entry.get("inference_stats", {}).get("queue", {})
            ns += int(queue.get("ns", 0))
            count += int(queue.get("count", 0))
        return ns, count

    ns0, n0 = totals(before)
    ns1, n1 = totals(after)
    if n1 - n0 <= 0:
        return None
    return (ns1 - ns0) / (n1 - n0) / 1000.0


__all__ = ["label_replicas", "merge_statistics", "queue_us_per_request", "sum_replicas"]
