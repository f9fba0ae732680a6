"""The sweep: each configuration served by its own server, measured with ``naiad perf``.

For every model and configuration, a copy of the model folder (and of the
models an ensemble needs) with the variant's config.pbtxt goes into a
scratch repository, a server is started on it (naiad, or ``--server-command``),
and ``naiad perf`` measures each concurrency level over the wire. A level
that goes over the latency budget ends that configuration's sweep, as do
levels that stop adding throughput (less than 5% twice in a row) and two
levels in a row that cannot be measured stably (one is skipped). Quick
search moves between configurations by the objective; ``--time-budget``
stops starting new configurations once the budget would be exceeded.
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
import sys
import tempfile
import time
from typing import TextIO

from google.protobuf import text_format

from naiad.protocol import model_config_pb2 as mc
from naiad.repository import config as cfg
from naiad.repository.dependencies import dependencies_of
from naiad.tools.analyze.search import Space, Variant
from naiad.tools.analyze.server import ServerError, ServerProcess


@dataclasses.dataclass
class Settings:
    repository: str
    models: list[str]
    export_path: str
    space: Space
    concurrency: list[int]
    mode: str = "brute"  # or "quick"
    objective: str = "throughput"  # or "latency"
    latency_budget_ms: float = 0.0
    min_throughput: float = 0.0
    time_budget_s: float = 0.0
    protocol: str = "http"
    measurement_interval_ms: int = 1000
    stability_percentage: float = 10.0
    max_trials: int = 10
    server_command: str = ""
    server_flags: list[str] = dataclasses.field(default_factory=list)
    perf_args: list[str] = dataclasses.field(default_factory=list)
    progress: bool = True


@dataclasses.dataclass
class Measurement:
    model: str
    config: str  # <model>_config_<n> or <model>_config_default
    variant: str  # the label
    instances: int
    max_batch_size: int
    dynamic_batching: bool
    queue_delay_us: int
    concurrency: int
    throughput: float  # infer/sec
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float
    server_queue_us: int
    server_compute_us: int
    client_cores: float

    def satisfies(self, s: Settings) -> bool:
        if s.latency_budget_ms and self.p99_ms > s.latency_budget_ms:
            return False
        return not (s.min_throughput and self.throughput < s.min_throughput)


@dataclasses.dataclass
class ConfigResult:
    model: str
    name: str
    variant: Variant
    config: mc.ModelConfig
    measurements: list[Measurement] = dataclasses.field(default_factory=list)
    error: str = ""

    def best(self, s: Settings) -> Measurement | None:
        ok = [m for m in self.measurements if m.satisfies(s)]
        if not ok:
            return None
        if s.objective == "latency":
            return min(ok, key=lambda m: (m.p99_ms, -m.throughput))
        return max(ok, key=lambda m: (m.throughput, -m.p99_ms))


@dataclasses.dataclass
class ModelResult:
    model: str
    base: mc.ModelConfig  # completed, as the server serves it: what variants change
    original: mc.ModelConfig | None = None  # config.pbtxt as written, if there is one
    configs: list[ConfigResult] = dataclasses.field(default_factory=list)
    skipped: int = 0  # configurations the time budget left out

    def best(self, s: Settings) -> tuple[ConfigResult, Measurement] | None:
        cands = [(c, c.best(s)) for c in self.configs if c.best(s) is not None]
        if not cands:
            return None
        if s.objective == "latency":
            return min(cands, key=lambda cm: (cm[1].p99_ms, -cm[1].throughput))
        return max(cands, key=lambda cm: (cm[1].throughput, -cm[1].p99_ms))


class Sweep:
    def __init__(self, s: Settings, out: TextIO = sys.stderr):
        self.s = s
        self.out = out
        self.start = time.monotonic()
        self.per_level_s: list[float] = []
        self.bar = None

    # -- time ---------------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def level_estimate(self) -> float:
        if self.per_level_s:
            return sum(self.per_level_s) / len(self.per_level_s)
        return 3 * self.s.measurement_interval_ms * 1.2 / 1000.0 + 1.0

    def config_estimate(self) -> float:
        return self.level_estimate() * len(self.s.concurrency) + 3.0

    def over_budget(self) -> bool:
        budget = self.s.time_budget_s
        return bool(budget) and self.elapsed() + self.config_estimate() > budget

    # -- the sweep ----------------------------------------------------------------------------

    def run(self) -> list[ModelResult]:
        s = self.s
        bases = {m: self._base_config(m) for m in s.models}
        originals = {m: cfg.read_config(os.path.join(s.repository, m))
                     for m in s.models}
        plans = {m: s.space.variants(b) if s.mode == "brute" else [] for m, b in bases.items()}
        total = sum(len(p) for p in plans.values()) * len(s.concurrency) if s.mode == "brute" \
            else len(s.models) * 8 * len(s.concurrency)
        self._open_bar(total)
        results = []
        try:
            for model in s.models:
                config, _, text = originals[model]
                result = ModelResult(model, bases[model], config if text is not None else None)
                if s.mode == "brute":
                    for i, v in enumerate(plans[model]):
                        if self.over_budget():
                            result.skipped = len(plans[model]) - i
                            self._advance(result.skipped * len(s.concurrency))
                            break
                        result.configs.append(self._measure(model, bases[model], v,
                                                            len(result.configs)))
                else:
                    self._quick(result)
                results.append(result)
        finally:
            if self.bar is not None:
                self.bar.close()
        return results

    def _quick(self, result: ModelResult) -> None:
        s, base = self.s, result.base
        tried: dict[Variant, ConfigResult] = {}

        def score(c: ConfigResult) -> float:
            best = c.best(s)
            if best is None:
                return float("-inf")
            return best.throughput if s.objective == "throughput" else -best.p99_ms

        def measure(v: Variant) -> ConfigResult | None:
            if v in tried:
                return tried[v]
            if self.over_budget():
                result.skipped += 1
                return None
            c = self._measure(result.model, base, v, len(result.configs))
            result.configs.append(c)
            tried[v] = c
            return c

        measure(Variant(0, 0, False, default=True))  # the baseline, as model_analyzer reports it
        current = measure(s.space.start(base))
        while current is not None:
            best_next, best_score = None, score(current)
            for v in s.space.neighbours(current.variant, base):
                c = measure(v)
                if c is None:
                    continue
                value = score(c)
                if value > best_score + abs(best_score) * 0.01:  # a 1% gain moves the climb
                    best_next, best_score = c, value
            current = best_next

    # -- one configuration ------------------------------------------------------------------

    def _base_config(self, model: str) -> mc.ModelConfig:
        model_dir = os.path.join(self.s.repository, model)
        if not os.path.isdir(model_dir):
            raise ValueError(f"model '{model}' is not in {self.s.repository}")
        config, _, _ = cfg.load_model_config(model_dir, model)
        if config.platform == "ensemble":
            raise ValueError(f"'{model}' is an ensemble: analyze its composing models "
                             "(ensembles have no instances or batching of their own)")
        return config

    def _stage(self, model: str, config: mc.ModelConfig, scratch: str) -> None:
        """The model folder with the variant's config, and the models it depends on."""
        todo, seen = [model], set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            src = os.path.join(self.s.repository, name)
            dst = os.path.join(scratch, name)
            shutil.copytree(src, dst, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
            if name == model:
                for extra in os.listdir(os.path.join(dst)):  # other configs would shadow it
                    if extra == "configs":
                        shutil.rmtree(os.path.join(dst, extra))
                with open(os.path.join(dst, "config.pbtxt"), "w") as f:
                    f.write(text_format.MessageToString(config))
            else:
                dep_config, _, _ = cfg.load_model_config(src, name)
                todo += sorted(dependencies_of(dep_config))

    def _measure(self, model: str, base: mc.ModelConfig, v: Variant, index: int
                 ) -> ConfigResult:
        from naiad.tools import perf

        s = self.s
        name = f"{model}_config_default" if v.default else f"{model}_config_{index}"
        config = v.apply(base)
        config.name = model
        result = ConfigResult(model, name, v, config)
        self._describe(f"{model}: {v.label()}")
        logs = os.path.join(s.export_path, "logs")
        os.makedirs(logs, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix="naiad-analyze-repo-")
        levels_done = 0
        try:
            self._stage(model, config, scratch)
            server = ServerProcess(scratch, model, s.server_command,
                                   ["--allow-metrics=false", *s.server_flags],
                                   log_path=os.path.join(logs, f"{name}.server.log"))
            with server:
                last: list[float] = []
                unstable = 0
                for conc in s.concurrency:
                    t0 = time.monotonic()
                    buf = io.StringIO()
                    argv = ["-m", model, "-u", server.url(s.protocol), "-i", s.protocol,
                            "--concurrency-range", str(conc), "-p",
                            str(s.measurement_interval_ms), "-s", str(s.stability_percentage),
                            "-r", str(s.max_trials), "--no-progress", *s.perf_args]
                    try:
                        run = perf.run(perf.parse(argv), out=buf, err=buf)
                    except perf.PerfError as exc:
                        if "stable measurement" not in str(exc):
                            raise
                        run = None  # this level never settled
                    finally:
                        with open(os.path.join(logs, f"{name}.perf.log"), "a") as f:
                            f.write(buf.getvalue())
                    self.per_level_s.append(time.monotonic() - t0)
                    levels_done += 1
                    self._advance(1)
                    if run is None or not run.statuses:  # no stable measurement here
                        unstable += 1
                        if unstable >= 2:  # two in a row: it cannot be measured here
                            if not result.measurements:
                                result.error = "no stable measurement (see the perf log)"
                            break
                        continue
                    unstable = 0
                    m = self._measurement(result, conc, run)
                    result.measurements.append(m)
                    if s.latency_budget_ms and m.p99_ms > s.latency_budget_ms:
                        break
                    last.append(m.throughput)
                    if len(last) >= 3 and last[-1] < last[-2] * 1.05 and \
                            last[-2] < last[-3] * 1.05:
                        break  # saturated
        except (ServerError, perf.PerfError, OSError, ValueError) as exc:
            result.error = str(exc).strip().splitlines()[-1] if str(exc).strip() else \
                type(exc).__name__
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            self._advance(len(s.concurrency) - levels_done)
        return result

    def _measurement(self, result: ConfigResult, conc: int, run) -> Measurement:
        st = run.statuses[0]
        c, srv = st.client, st.server
        v = result.variant
        pct = c.percentile_latency_ns
        queue = srv.queue_time_ns // srv.queue_count // 1000 if srv.queue_count else 0
        compute = srv.compute_time_ns // srv.compute_input_count // 1000 \
            if srv.compute_input_count else 0
        return Measurement(
            model=result.model, config=result.name, variant=v.label(),
            instances=(result.config.instance_group[0].count
                       if result.config.instance_group else 1),
            max_batch_size=result.config.max_batch_size,
            dynamic_batching=result.config.HasField("dynamic_batching"),
            queue_delay_us=result.config.dynamic_batching.max_queue_delay_microseconds,
            concurrency=conc, throughput=round(c.infer_per_sec, 2),
            p50_ms=pct.get(50, 0) / 1e6, p90_ms=pct.get(90, 0) / 1e6,
            p95_ms=pct.get(95, 0) / 1e6, p99_ms=pct.get(99, 0) / 1e6,
            avg_ms=c.avg_latency_ns / 1e6, server_queue_us=queue, server_compute_us=compute,
            client_cores=round(max(st.client_cores or [0.0]), 3))

    # -- progress -----------------------------------------------------------------------------

    def _open_bar(self, total: int) -> None:
        if not self.s.progress:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - the tools extra brings it
            return
        self.bar = tqdm(total=total, unit="level", desc="naiad analyze", file=self.out,
                        dynamic_ncols=True)

    def _advance(self, n: int) -> None:
        if self.bar is not None and n > 0:
            self.bar.update(n)

    def _describe(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)
        elif not self.s.progress:
            return
        else:
            print(f"measuring {text}", file=self.out, flush=True)
