"""``naiad analyze``: model_analyzer's search for the best configuration, on CPU.

    naiad analyze -m models --profile-models add_sub,simple_onnx \\
        --latency-budget-ms 5 --time-budget 600

For each model: configurations varying instance count, max_batch_size and
dynamic batching (``search.py``), each served by its own naiad on a scratch
copy of the model and measured with ``naiad perf`` over a concurrency range
(``profile.py``); the best per model by the objective within the
constraints, a CSV of every measurement and an HTML report (``report.py``).
See docs/tools/analyze.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from naiad.tools.analyze.profile import ModelResult, Settings, Sweep
from naiad.tools.analyze.search import Space, powers_of_two

__all__ = ["ModelResult", "Settings", "Space", "Sweep", "analyze", "main"]


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'")
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got '{text}'")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="naiad analyze",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Find the best configuration of models (instance count, max_batch_size, "
                    "dynamic batching) by measuring each one served, like model_analyzer "
                    "profile; writes the best config.pbtxt, a CSV and an HTML report.")
    p.add_argument("-m", "--model-repository", required=True)
    p.add_argument("--profile-models", required=True,
                   help="Comma-separated models of the repository to analyze.")
    p.add_argument("-e", "--export-path", default="analyze_results",
                   help="Where results, configs and the report go (default ./analyze_results).")
    p.add_argument("--run-config-search-mode", choices=["brute", "quick"], default="brute")
    p.add_argument("--run-config-search-disable", action="store_true",
                   help="Measure only the repository's configuration.")
    p.add_argument("--run-config-search-min-instance-count", type=int, default=1)
    p.add_argument("--run-config-search-max-instance-count", type=int,
                   default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--run-config-search-min-model-batch-size", type=int, default=1)
    p.add_argument("--run-config-search-max-model-batch-size", type=int, default=16)
    p.add_argument("--run-config-search-min-concurrency", type=int, default=1)
    p.add_argument("--run-config-search-max-concurrency", type=int, default=32)
    p.add_argument("--instance-counts", type=_ints, default=None,
                   help="Explicit instance counts (instead of min..max).")
    p.add_argument("--max-batch-sizes", type=_ints, default=None,
                   help="Explicit max_batch_size values (instead of powers of 2).")
    p.add_argument("--concurrency", type=_ints, default=None,
                   help="Explicit concurrency levels (instead of powers of 2).")
    p.add_argument("--max-queue-delays", type=_ints, default=[0],
                   help="Dynamic batching max_queue_delay_microseconds values (default 0).")
    p.add_argument("--preferred-batch-sizes", action="append", type=_ints, default=[],
                   help="A preferred_batch_size list to try (repeatable).")
    p.add_argument("--no-dynamic-batching-off", action="store_true",
                   help="Do not try batchable models without dynamic batching.")
    p.add_argument("--objectives", choices=["throughput", "latency"], default="throughput",
                   help="What 'best' maximizes: throughput, or minimizes: p99 latency.")
    p.add_argument("--latency-budget-ms", type=float, default=0.0,
                   help="Constraint: p99 latency at most this (ms).")
    p.add_argument("--min-throughput", type=float, default=0.0,
                   help="Constraint: at least this many infer/s.")
    p.add_argument("--time-budget", type=float, default=0.0,
                   help="Seconds: stop starting configurations that would not finish in it.")
    p.add_argument("-i", "--protocol", choices=["http", "grpc"], default="http")
    p.add_argument("-p", "--measurement-interval", type=int, default=1000,
                   help="naiad perf's window (ms, default 1000).")
    p.add_argument("-s", "--stability-percentage", type=float, default=10.0)
    p.add_argument("-r", "--max-trials", type=int, default=10)
    p.add_argument("--perf-flag", action="append", default=[], metavar="FLAG",
                   help="An extra naiad perf option (repeatable), e.g. --perf-flag=-b4.")
    p.add_argument("--server-command", default="",
                   help="Serve with this command instead of naiad (e.g. tritonserver "
                        "--backend-directory=...); it gets the repository and port flags.")
    p.add_argument("--server-flag", action="append", default=[], metavar="FLAG",
                   help="An extra server flag (repeatable).")
    p.add_argument("--no-progress", action="store_true")
    return p


def settings_from(ns: argparse.Namespace) -> Settings:
    if ns.run_config_search_min_instance_count < 1 or \
            ns.run_config_search_max_instance_count < ns.run_config_search_min_instance_count:
        raise ValueError("instance count range: 1 <= min <= max")
    instances = ns.instance_counts or list(range(ns.run_config_search_min_instance_count,
                                                 ns.run_config_search_max_instance_count + 1))
    mbs = ns.max_batch_sizes or powers_of_two(ns.run_config_search_min_model_batch_size,
                                              ns.run_config_search_max_model_batch_size)
    conc = ns.concurrency or powers_of_two(ns.run_config_search_min_concurrency,
                                           ns.run_config_search_max_concurrency)
    if any(v < 1 for v in instances + mbs + conc):
        raise ValueError("instance counts, batch sizes and concurrency levels are >= 1")
    space = Space(instances=sorted(set(instances)), max_batch_sizes=sorted(set(mbs)),
                  queue_delays=sorted(set(ns.max_queue_delays)),
                  preferred=[tuple(p) for p in ns.preferred_batch_sizes],
                  dynamic_off=not ns.no_dynamic_batching_off)
    if ns.run_config_search_disable:
        space = Space(instances=[], max_batch_sizes=[], queue_delays=[0], preferred=[])
        ns.run_config_search_mode = "brute"
    models = [m.strip() for m in ns.profile_models.split(",") if m.strip()]
    if not models:
        raise ValueError("--profile-models names no model")
    return Settings(
        repository=os.path.abspath(ns.model_repository), models=models,
        export_path=os.path.abspath(ns.export_path), space=space,
        concurrency=sorted(set(conc)), mode=ns.run_config_search_mode,
        objective=ns.objectives, latency_budget_ms=ns.latency_budget_ms,
        min_throughput=ns.min_throughput, time_budget_s=ns.time_budget,
        protocol=ns.protocol, measurement_interval_ms=ns.measurement_interval,
        stability_percentage=ns.stability_percentage, max_trials=ns.max_trials,
        server_command=ns.server_command, server_flags=list(ns.server_flag),
        perf_args=list(ns.perf_flag), progress=not ns.no_progress)


def analyze(s: Settings) -> tuple[list[ModelResult], dict[str, str]]:
    from naiad.tools.analyze import report

    sweep = Sweep(s)
    results = sweep.run()
    return results, report.write_all(results, s, sweep.elapsed())


def main(argv: list[str]) -> int:
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        s = settings_from(ns)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("naiad").addHandler(logging.NullHandler())
    logging.getLogger("naiad").setLevel(logging.ERROR)
    try:
        results, paths = analyze(s)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    for r in results:
        best = r.best(s)
        measured = sum(1 for c in r.configs if c.measurements)
        if best is None:
            print(f"{r.model}: no configuration meets the constraints ({measured} measured)")
            continue
        c, m = best
        print(f"{r.model}: best {c.variant.label()} — {m.throughput:,.1f} infer/s at "
              f"concurrency {m.concurrency}, p99 {m.p99_ms:.2f} ms ({measured} configurations"
              f"{f', {r.skipped} left out by the time budget' if r.skipped else ''})")
        print(f"  config: {paths[f'best:{r.model}']}")
    print(f"measurements: {paths['csv']}")
    print(f"report: {paths['html']}")
    return 0 if all(r.best(s) is not None for r in results) else 1
