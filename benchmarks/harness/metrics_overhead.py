"""Scenario ``metrics_overhead``: what statistics and Prometheus metrics cost on add_sub.

Three naiad servers serve the add_sub repository, interleaved per concurrency
level like the other scenarios:

* ``naiad-metrics``: the default (statistics on, metrics endpoint on), scraped
  at ``/metrics`` once per second by a background thread while it is measured
  (a harsher scrape rate than Prometheus' usual 15 s);
* ``naiad-no-metrics``: ``--allow-metrics=false`` (statistics stay on: the
  statistics extension needs them);
* ``naiad-summaries``: the opt-in per-request latency summaries
  (``--metrics-config summary_latencies=true``), scraped like the first.

The target (issue 5): ``naiad-metrics`` within 10 % of ``naiad-no-metrics``.
"""

from __future__ import annotations

import threading
import urllib.request

from .servers import NaiadServer

VARIANTS = (
    ("naiad-metrics", (), True),
    ("naiad-no-metrics", ("--allow-metrics=false",), False),
    ("naiad-summaries", ("--metrics-config", "summary_latencies=true"), True),
)


class _Scraper:
    """GETs /metrics every ``interval_s`` while active; counts scrapes and failures."""

    def __init__(self, port: int, interval_s: float = 1.0):
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval_s = interval_s
        self.scrapes = 0
        self.failures = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    self.bytes = len(r.read())
                    self.scrapes += 1
            except OSError:
                self.failures += 1

    def __enter__(self) -> "_Scraper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def run(ctx, *, repo, request, check, start, log, logs_dir, naiad_exe, ratio) -> dict:
    scn = {
        "description": ("add_sub over HTTP binary tensors: default naiad (metrics scraped every "
                        "second) vs --allow-metrics=false vs opt-in latency summaries"),
        "repository": str(repo),
        "servers": {}, "results": [], "ratios": [], "scrapes": [],
    }
    servers = []
    for name, args, scraped in VARIANTS:
        s = NaiadServer(repo, ctx.server_cpus, logs_dir, naiad_exe, extra_args=args, name=name)
        servers.append((s, scraped))
    running = []
    try:
        for s, scraped in servers:
            st = start(s, ["add_sub"], check)
            scn["servers"][s.name] = st
            if st["status"] == "ok":
                running.append((s, scraped))
        for tr in ctx.transports:
            for c in ctx.args.concurrency:
                for s, scraped in running:
                    if scraped:
                        with _Scraper(s.metrics_port) as sc:
                            row = ctx.measure(tr, s, request, c)
                        scn["scrapes"].append({"server": s.name, "concurrency": c,
                                               "scrapes": sc.scrapes, "failures": sc.failures,
                                               "page_bytes": sc.bytes})
                    else:
                        row = ctx.measure(tr, s, request, c)
                    scn["results"].append(row)
                    log(f"{s.name} c={c}: {row.get('infer_per_s')} infer/s")
                by = {r["server"]: r for r in scn["results"]
                      if r["transport"] == tr.name and r["concurrency"] == c}
                base = by.get("naiad-no-metrics", {}).get("infer_per_s")
                scn["ratios"].append({
                    "transport": tr.name, "concurrency": c,
                    "metrics_over_no_metrics": ratio(
                        by.get("naiad-metrics", {}).get("infer_per_s"), base),
                    "summaries_over_no_metrics": ratio(
                        by.get("naiad-summaries", {}).get("infer_per_s"), base),
                })
    finally:
        for s, _ in servers:
            s.stop()
    return scn


def markdown(scn: dict, fmt, cell_rate, find) -> list[str]:
    out = ["## metrics_overhead — add_sub with statistics and metrics on vs off", "",
           ("naiad-metrics: defaults, /metrics scraped every second during the measurement; "
            "naiad-no-metrics: --allow-metrics=false; naiad-summaries: "
            "--metrics-config summary_latencies=true, scraped likewise. Target: "
            "naiad-metrics / naiad-no-metrics >= 0.90."), ""]
    if scn.get("error"):
        out += [f"- scenario error: {scn['error']}", ""]
    out += ["| transport | concurrency | metrics infer/s | no-metrics infer/s "
            "| summaries infer/s | metrics / no-metrics | summaries / no-metrics |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    rows = scn.get("results", [])
    for r in scn.get("ratios", []):
        t, c = r["transport"], r["concurrency"]
        m = find(rows, "naiad-metrics", t, c)
        n = find(rows, "naiad-no-metrics", t, c)
        s = find(rows, "naiad-summaries", t, c)
        out.append(f"| {t} | {c} | {cell_rate(m)} | {cell_rate(n)} | {cell_rate(s)} "
                   f"| {fmt(r.get('metrics_over_no_metrics'), 2)} "
                   f"| {fmt(r.get('summaries_over_no_metrics'), 2)} |")
    out.append("")
    return out

