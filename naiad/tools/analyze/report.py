"""What ``naiad analyze`` writes into ``--export-path``.

* ``results/metrics-model-inference.csv`` — every measurement (one row per
  configuration and concurrency), as model_analyzer names that file;
* ``output_model_repository/<model>_config_<n>/config.pbtxt`` — every
  configuration measured, and ``best_configs/<model>/config.pbtxt`` — the best
  one per model, ready to copy over the repository's;
* ``reports/report.html`` — one self-contained page: per model the best
  configuration against the constraints, throughput against p99 latency for
  every configuration with the Pareto front, throughput against concurrency,
  and a table of the configurations.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import os

from naiad.protocol import model_config_pb2 as mc
from naiad.tools.analyze.profile import Measurement, ModelResult, Settings
from naiad.tools.analyze.search import Variant

FIELDS = [f.name for f in dataclasses.fields(Measurement)]


def pareto(points: list[Measurement]) -> list[Measurement]:
    """Measurements no other beats on both throughput (higher) and p99 latency (lower)."""
    front, best = [], -1.0
    for m in sorted(points, key=lambda m: (m.p99_ms, -m.throughput)):
        if m.throughput > best:
            front.append(m)
            best = m.throughput
    return front


def write_csv(path: str, results: list[ModelResult]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for r in results:
            for c in r.configs:
                for m in c.measurements:
                    w.writerow([getattr(m, k) for k in FIELDS])


def best_config(result: ModelResult, variant: Variant) -> mc.ModelConfig:
    """The best variant applied to the model's own config.pbtxt (auto-complete fills the rest)."""
    if result.original is None:
        config = variant.apply(result.base)
    else:
        applied = variant.apply(result.base)
        config = mc.ModelConfig()
        config.CopyFrom(result.original)
        if not variant.default:
            config.ClearField("instance_group")
            config.instance_group.extend(applied.instance_group)
            config.max_batch_size = applied.max_batch_size
            config.ClearField("dynamic_batching")
            if applied.HasField("dynamic_batching"):
                config.dynamic_batching.CopyFrom(applied.dynamic_batching)
                if list(config.dynamic_batching.preferred_batch_size) == \
                        [applied.max_batch_size] and not variant.preferred:
                    del config.dynamic_batching.preferred_batch_size[:]
    config.name = result.model
    return config


def write_configs(export: str, results: list[ModelResult], s: Settings) -> dict[str, str]:
    from naiad.tools.pbtxt import config_text

    written = {}
    for r in results:
        for c in r.configs:
            folder = os.path.join(export, "output_model_repository", c.name)
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "config.pbtxt"), "w") as f:
                f.write(f"# {c.variant.label()}\n" + config_text(c.config))
        best = r.best(s)
        if best is None:
            continue
        folder = os.path.join(export, "best_configs", r.model)
        os.makedirs(folder, exist_ok=True)
        c, m = best
        path = os.path.join(folder, "config.pbtxt")
        with open(path, "w") as f:
            f.write(f"# naiad analyze: best of {len(r.configs)} configurations by "
                    f"{s.objective} ({c.variant.label()}): {m.throughput:g} infer/s, p99 "
                    f"{m.p99_ms:.2f} ms at concurrency {m.concurrency}\n")
            f.write(config_text(best_config(r, c.variant)))
        written[r.model] = path
    return written


# ---------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(r: ModelResult, s: Settings) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = r.best(s)
    points = [m for c in r.configs for m in c.measurements]

    def figure(x, title: str, xlabel: str, extra) -> str:
        """Throughput against ``x(measurement)``, one line per configuration (the best bold)."""
        fig, ax = plt.subplots(figsize=(7.2, 4.4), dpi=100)
        for c in r.configs:
            if not c.measurements:
                continue
            ms = sorted(c.measurements, key=lambda m: m.concurrency)
            ax.plot([x(m) for m in ms], [m.throughput for m in ms], "o-", ms=3.5, alpha=0.9,
                    lw=2.6 if best and c is best[0] else 1.0, label=c.variant.label())
        extra(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("throughput (infer/s)")
        ax.set_title(f"{r.model}: {title}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        image = _png(fig)
        plt.close(fig)
        return image

    def latency_extras(ax) -> None:
        front = pareto(points)
        if front:
            ax.plot([m.p99_ms for m in front], [m.throughput for m in front], "k--", lw=1.2,
                    label="Pareto front")
        if s.latency_budget_ms:
            ax.axvline(s.latency_budget_ms, color="red", lw=1, ls=":", label="latency budget")
        if s.min_throughput:
            ax.axhline(s.min_throughput, color="orange", lw=1, ls=":", label="min throughput")

    def concurrency_axis(ax) -> None:
        ax.set_xscale("log", base=2)
        levels = sorted({m.concurrency for m in points})
        ax.set_xticks(levels)
        ax.set_xticklabels([str(v) for v in levels])
        ax.minorticks_off()

    return (figure(lambda m: m.p99_ms, "throughput vs p99 latency", "p99 latency (ms)",
                   latency_extras),
            figure(lambda m: m.concurrency, "throughput vs concurrency", "concurrency",
                   concurrency_axis))


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px;
       color: #1d2330; max-width: 1500px; }
h1 { font-size: 22px; margin: 0 0 4px 0; } h2 { font-size: 18px; margin: 28px 0 8px; }
.meta { color: #5b6475; font-size: 13px; margin-bottom: 14px; }
.best { background: #eef6ee; border: 1px solid #b9dcb9; border-radius: 6px; padding: 10px 14px;
        font-size: 14px; margin: 8px 0 12px; }
.none { background: #fbeeee; border-color: #e3b5b5; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
.plots img { border: 1px solid #dde2ea; border-radius: 4px; max-width: 49%; }
table { border-collapse: collapse; font-size: 12.5px; margin-top: 8px; }
th, td { border: 1px solid #dde2ea; padding: 3px 8px; text-align: right; }
th { background: #f3f5f9; } td.l { text-align: left; }
tr.star td { background: #eef6ee; font-weight: 600; }
pre { background: #f6f8fa; padding: 8px; font-size: 12px; border-radius: 4px; }
"""


def write_html(path: str, results: list[ModelResult], s: Settings, elapsed_s: float,
               best_paths: dict[str, str]) -> None:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>naiad analyze</title>"
             f"<style>{_CSS}</style></head><body>",
             "<h1>naiad analyze</h1>",
             f"<div class='meta'>repository <b>{e(s.repository)}</b> · {s.mode} search · "
             f"objective: {e(s.objective)}"
             + (f" · latency budget {s.latency_budget_ms:g} ms" if s.latency_budget_ms else "")
             + (f" · min throughput {s.min_throughput:g} infer/s" if s.min_throughput else "")
             + f" · {e(s.protocol.upper())} · concurrency {', '.join(map(str, s.concurrency))}"
             + f" · {elapsed_s:.0f} s</div>"]
    for r in results:
        parts.append(f"<h2>{e(r.model)}</h2>")
        best = r.best(s)
        measured = sum(1 for c in r.configs if c.measurements)
        note = f"{measured} of {len(r.configs) + r.skipped} configurations measured"
        if r.skipped:
            note += f" ({r.skipped} left out by the time budget)"
        if best is None:
            parts.append(f"<div class='best none'>No configuration meets the constraints. "
                         f"{note}.</div>")
        else:
            c, m = best
            parts.append(
                f"<div class='best'>Best: <b>{e(c.variant.label())}</b> — "
                f"<b>{m.throughput:,.1f} infer/s</b> at concurrency {m.concurrency}, "
                f"p99 {m.p99_ms:.2f} ms (p50 {m.p50_ms:.2f} ms). {note}. Config: "
                f"<code>{e(best_paths.get(r.model, ''))}</code></div>")
        if any(c.measurements for c in r.configs):
            a, b = _plots(r, s)
            parts.append(f"<div class='plots'><img src='{a}' alt='throughput vs p99 latency'>"
                         f"<img src='{b}' alt='throughput vs concurrency'></div>")
        parts.append("<table><tr><th>configuration</th><th>instances</th><th>max batch</th>"
                     "<th>dynamic batching</th><th>best concurrency</th><th>infer/s</th>"
                     "<th>p50 ms</th><th>p99 ms</th><th>server queue us</th>"
                     "<th>server compute us</th><th>note</th></tr>")
        for c in r.configs:
            m = c.best(s)
            star = " class='star'" if best and c is best[0] else ""
            cfg_ = c.config
            db = "on" if cfg_.HasField("dynamic_batching") else "off"
            if cfg_.dynamic_batching.max_queue_delay_microseconds:
                db += f" ({cfg_.dynamic_batching.max_queue_delay_microseconds} us)"
            inst = cfg_.instance_group[0].count if cfg_.instance_group else 1
            if m is None:
                why = c.error or ("no level met the constraints" if c.measurements
                                  else "not measured")
                parts.append(f"<tr{star}><td class='l'>{e(c.variant.label())}</td><td>{inst}"
                             f"</td><td>{cfg_.max_batch_size}</td><td>{db}</td><td></td><td>"
                             f"</td><td></td><td></td><td></td><td></td><td class='l'>"
                             f"{e(why)}</td></tr>")
                continue
            parts.append(f"<tr{star}><td class='l'>{e(c.variant.label())}</td><td>{inst}</td>"
                         f"<td>{cfg_.max_batch_size}</td><td>{db}</td><td>{m.concurrency}</td>"
                         f"<td>{m.throughput:,.1f}</td><td>{m.p50_ms:.2f}</td>"
                         f"<td>{m.p99_ms:.2f}</td><td>{m.server_queue_us}</td>"
                         f"<td>{m.server_compute_us}</td><td class='l'>"
                         f"{'client-bound' if m.client_cores >= 0.85 else ''}</td></tr>")
        parts.append("</table>")
        if best is not None:
            from naiad.tools.pbtxt import config_text

            parts.append("<details><summary>best config.pbtxt</summary><pre>"
                         f"{e(config_text(best_config(r, best[0].variant)))}</pre></details>")
    parts.append("</body></html>")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


def write_all(results: list[ModelResult], s: Settings, elapsed_s: float) -> dict[str, str]:
    os.makedirs(os.path.join(s.export_path, "results"), exist_ok=True)
    os.makedirs(os.path.join(s.export_path, "reports"), exist_ok=True)
    csv_path = os.path.join(s.export_path, "results", "metrics-model-inference.csv")
    write_csv(csv_path, results)
    best = write_configs(s.export_path, results, s)
    html_path = os.path.join(s.export_path, "reports", "report.html")
    write_html(html_path, results, s, elapsed_s, best)
    return {"csv": csv_path, "html": html_path, **{f"best:{k}": v for k, v in best.items()}}
