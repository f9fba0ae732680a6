"""Scaling on queue time per request: naiad's autoscaling policy for Ray Serve.

Ray Serve's default policy keeps ``target_ongoing_requests`` per replica.
That counts requests, not waiting: a replica whose dynamic batcher holds
many requests in one batch looks busy while nobody waits, and a replica with
few slow requests looks idle while they queue. ``QueueTimePolicy`` scales on
what users feel instead: the mean time a request waits in naiad's scheduler
queues before it runs.

Every replica reports (``record_autoscaling_stats``) the queue time of the
requests it executed since its previous report and how many there were.
The policy weights each replica's figure by its request count, so idle
models and idle replicas do not dilute the mean (the mistake Triton's Helm
chart makes, server issue #8979), and proposes, as Kubernetes' HPA does,
``ceil(replicas * observed / target)``, holding still within a 10% band.
Serve then applies ``min_replicas``/``max_replicas`` and the up/down delays.
"""

from __future__ import annotations

import math
from typing import Any

QUEUE_US = "naiad_queue_us_per_request"
REQUESTS = "naiad_requests"
TOLERANCE = 0.1


def observed_queue_us(queue_us: dict[Any, float], requests: dict[Any, float]) -> float | None:
    """Request-weighted mean of the replicas' queue time; None when no request ran."""
    total = sum(max(0.0, float(requests.get(r, 0.0))) for r in queue_us)
    if total <= 0:
        return None
    return sum(float(q) * max(0.0, float(requests.get(r, 0.0)))
               for r, q in queue_us.items()) / total


def desired_replicas(current: int, observed_us: float | None, target_us: float,
                     tolerance: float = TOLERANCE) -> int:
    """HPA's rule on queue time: proportional, with a dead band around the target."""
    if current <= 0:
        return 1 if observed_us else 0
    if observed_us is None:
        return current if current <= 1 else current - 1  # no traffic: step down
    ratio = observed_us / target_us
    if abs(ratio - 1.0) <= tolerance:
        return current
    return max(1, math.ceil(current * ratio))


class QueueTimePolicy:
    """A Ray Serve ``policy_function`` (a class: Serve passes ``policy_kwargs`` once)."""

    def __init__(self, target_queue_time_us: float = 5000.0, tolerance: float = TOLERANCE):
        self.target_us = float(target_queue_time_us)
        self.tolerance = float(tolerance)

    def __call__(self, ctx: Any) -> tuple[int, dict]:
        metrics = ctx.aggregated_metrics or {}
        observed = observed_queue_us(metrics.get(QUEUE_US, {}), metrics.get(REQUESTS, {}))
        desired = desired_replicas(ctx.current_num_replicas, observed, self.target_us,
                                   self.tolerance)
        state = dict(ctx.policy_state or {})
        state["naiad_observed_queue_us"] = observed
        return desired, state


__all__ = ["QUEUE_US", "REQUESTS", "QueueTimePolicy", "desired_replicas", "observed_queue_us"]
