"""Measurement windows, stability and the search over load levels (perf_analyzer's rules).

For each level: optional warm-up requests, then windows back to back
(``time_windows``: ``--measurement-interval`` x 1.2, as perf_analyzer sleeps;
``count_windows``: until ``--measurement-request-count`` requests completed,
checked every second). A request counts in the window its (last) response
ends in. The server's statistics (the statistics extension) are read at each
window edge and the difference is the window's server side. The level is
stable when the last 3 windows' throughput and stabilizing latency (average,
or ``--percentile``) vary by at most ``--stability-percentage`` (max/min);
the report merges those 3 windows. Levels go linearly from start to end by
step (an end of 0 goes on until ``--latency-threshold``), or by binary
search with ``--binary-search``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from naiad.tools.perf.control import Control
from naiad.tools.perf.engine import DELAYED, NULL_LAST, SEQ_END
from naiad.tools.perf.model import ModelInfo
from naiad.tools.perf.options import NO_LIMIT, PerfOptions
from naiad.tools.perf.stats import ClientStats, PerfStatus, ServerStats, summarize_latency

STABILITY_WINDOW = 3
CLIENT_BOUND_CORES = 0.85


class ProfileError(Exception):
    pass


class Profiler:
    def __init__(self, opts: PerfOptions, model: ModelInfo, control: Control, engines: list,
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr):
        self.o = opts
        self.model = model
        self.control = control
        self.engines = engines
        self.out = out
        self.err = err
        self.include_server_stats = True
        self._pending: list[tuple] = []
        self._prev_end_ns = 0
        self._prev_server: dict | None = None

    # -- the search ---------------------------------------------------------------------------

    async def profile(self) -> list[PerfStatus]:
        o = self.o
        statuses: list[PerfStatus] = []
        start, end, step = (o.concurrency_range if o.mode == "concurrency"
                            else o.request_rate_range)
        if not o.binary_search:
            value = start
            while True:
                meets, stable = await self._profile_level(value, statuses)
                value += step
                if not ((value <= end or end == NO_LIMIT) and meets):
                    break
            if value == start + step and not stable:
                raise ProfileError("Failed to obtain stable measurement.")
            return statuses
        meets, _ = await self._profile_level(start, statuses)
        if not meets:
            return statuses
        meets, _ = await self._profile_level(end, statuses)
        if meets:
            return statuses
        lo, hi = start, end
        while hi - lo > step:
            mid = (hi + lo) / 2 if o.mode == "request_rate" else (hi + lo) // 2
            meets, _ = await self._profile_level(mid, statuses)
            if meets:
                lo = mid
            else:
                hi = mid
        return statuses

    async def _profile_level(self, value, statuses: list[PerfStatus]) -> tuple[bool, bool]:
        o = self.o
        level = PerfStatus(batch_size=o.batch_size, on_sequence_model=self.model.sequence)
        if o.mode == "concurrency":
            level.concurrency = int(value)
        else:
            level.request_rate = float(value)
        await self._start(value, o.warmup_request_count, warmup=True)
        if o.mode == "concurrency":
            print(f"Request concurrency: {int(value)}", file=self.out, flush=True)
        else:
            print(f"Request Rate: {_num(value)} inference requests per second", file=self.out,
                  flush=True)
        if o.request_count:  # the one window holds every request: open it before the load
            await self._open_window()
        await self._start(value, o.request_count)
        stable = await self._windows(level)
        await self._stop()
        threshold = o.latency_threshold_ms
        if threshold != NO_LIMIT and level.stabilizing_latency_ns // 1_000_000 >= threshold:
            print(f"Measured latency went over the set limit of {threshold} msec. ",
                  file=self.err)
            return False, stable
        if not stable:
            if o.mode == "concurrency":
                what = ("--measurement-interval" if o.measurement_mode == "time_windows"
                        else "--measurement-request-count")
                print(f"Failed to obtain stable measurement within {o.max_trials} measurement "
                      f"windows for concurrency {int(value)}. Please try to increase the "
                      f"{what}.", file=self.err)
            else:
                print("Failed to obtain stable measurement.", file=self.err)
            return False, stable
        statuses.append(level)
        from naiad.tools.perf import report

        report.print_level(level, self.o, self.model, self.include_server_stats, self.out)
        return True, stable

    # -- engines ------------------------------------------------------------------------------

    def _shares(self, total: float, integer: bool) -> list:
        n = len(self.engines)
        if integer:
            base, extra = divmod(int(total), n)
            return [base + (1 if i < extra else 0) for i in range(n)]
        return [total / n] * n

    async def _start(self, value, limit: int, warmup: bool = False) -> None:
        o = self.o
        if warmup and limit <= 0:
            return
        limits = self._shares(limit, True) if limit else [0] * len(self.engines)
        if o.mode == "concurrency":
            conc = self._shares(int(value), True)
            await asyncio.gather(*[e.start_concurrency(c, lim) for e, c, lim
                                   in zip(self.engines, conc, limits) if c > 0 or lim])
        else:
            rates = self._shares(float(value), False)
            await asyncio.gather(*[e.start_rate(r, lim) for e, r, lim
                                   in zip(self.engines, rates, limits)])
        if warmup:
            await asyncio.gather(*[e.wait_done(600.0) for e in self.engines])
            await self._stop()
            for e in self.engines:  # drop the warm-up's records
                await e.snapshot_async()

    async def _stop(self) -> None:
        await asyncio.gather(*[e.stop() for e in self.engines])
        self._pending = []
        self._prev_end_ns = 0
        self._prev_server = None

    async def _check_errors(self) -> None:
        for e in self.engines:
            _, _, error = await e.counters_async()
            if error:
                raise ProfileError(f"Thread [{self.engines.index(e)}] had error: {error}")

    async def _completed(self) -> int:
        total = 0
        for e in self.engines:
            done, _, error = await e.counters_async()
            if error:
                raise ProfileError(f"Thread [{self.engines.index(e)}] had error: {error}")
            total += done
        return total

    # -- server statistics --------------------------------------------------------------------

    async def _server_stats(self) -> dict:
        if not self.include_server_stats:
            return {}
        try:
            if self.model.ensemble:
                items = await self.control.model_stats()
            else:
                items = await self.control.model_stats(self.model.name, self.model.version)
        except Exception as exc:  # noqa: BLE001 - a server without the extension
            print(f"warning: server statistics unavailable ({exc}); reporting client side only",
                  file=self.err)
            self.include_server_stats = False
            return {}
        return {(s["name"], str(s["version"])): ServerStats.from_json(s) for s in items}

    def _server_summary(self, start: dict, end: dict) -> ServerStats:
        key = (self.model.name, self.model.version)
        out = end.get(key, ServerStats()).minus(start.get(key))
        for name, version in self.model.composing:
            if version:
                ckey = (name, version)
            else:  # the version that served: the one whose count moved, else the newest
                cands = [k for k in end if k[0] == name]
                if not cands:
                    continue
                moved = [k for k in cands if end[k].success_count -
                         (start.get(k).success_count if start.get(k) else 0) > 0]
                ckey = max(moved or cands, key=lambda k: int(k[1]) if k[1].isdigit() else -1)
            if ckey in end:
                out.composing[ckey] = end[ckey].minus(start.get(ckey))
        return out

    # -- windows ------------------------------------------------------------------------------

    async def _windows(self, level: PerfStatus) -> bool:
        o = self.o
        windows: list[PerfStatus] = []
        throughputs: list[float] = []
        latencies: list[float] = []
        stable = False
        trial = 0
        while True:
            w = await self._measure(level, trial)
            windows.append(w)
            windows[:] = windows[-STABILITY_WINDOW:]
            throughputs.append(w.client.infer_per_sec)
            latencies.append(w.stabilizing_latency_ns)
            if o.verbose:
                if o.percentile != -1:
                    lat = f"p{o.percentile} latency: " \
                          f"{w.client.percentile_latency_ns[o.percentile] // 1000} usec"
                else:
                    lat = f"Avg latency: {w.client.avg_latency_ns // 1000} usec (std " \
                          f"{w.client.std_us} usec). "
                print(f"  Pass [{trial + 1}] throughput: {_num(w.client.infer_per_sec)} "
                      f"infer/sec. {lat}", file=self.out)
            if o.request_count:
                stable = True
                break
            stable = self._stable(throughputs, latencies, True)
            if self._done(latencies, stable):
                break
            trial += 1
            if trial >= o.max_trials:
                break
        if o.async_mode and not stable and self._stable(throughputs, latencies, False):
            print("Warning: Request latency is not stabilizing. Please try lowering the "
                  "request rate.", file=self.err)
            stable = True
        if stable:
            self._merge(windows, level)
        return stable

    def _stable(self, ips: list[float], lat: list[float], check_latency: bool) -> bool:
        if len(ips) < STABILITY_WINDOW:
            return False
        recent_ips = ips[-STABILITY_WINDOW:]
        if any(v == 0 for v in recent_ips):
            return False
        limit = 1 + self.o.stability_threshold
        if max(recent_ips) / min(recent_ips) > limit:
            return False
        if check_latency:
            recent = lat[-STABILITY_WINDOW:]
            if min(recent) <= 0 or max(recent) / min(recent) > limit:
                return False
        return True

    def _done(self, lat: list[float], stable: bool) -> bool:
        threshold = self.o.latency_threshold_ms
        within = True
        if len(lat) >= STABILITY_WINDOW:
            within = all(v < threshold * 1_000_000 for v in lat[-STABILITY_WINDOW:])
        return stable or (not within and threshold != NO_LIMIT)

    async def _open_window(self) -> None:
        start_server = await self._server_stats()
        for e in self.engines:  # the window starts now: restart the CPU clocks
            await e.snapshot_async()
        self._prev_end_ns, self._prev_server = time.time_ns(), start_server

    async def _measure(self, level: PerfStatus, trial: int) -> PerfStatus:
        o = self.o
        if self._prev_end_ns == 0:
            await self._open_window()
        start_ns, start_server = self._prev_end_ns, self._prev_server
        progress = _Progress(o, level, trial, self.err)
        try:
            if o.request_count:
                await self._wait_limited(progress)
            elif o.measurement_mode == "time_windows":
                await self._sleep(o.measurement_interval_ms * 1.2 / 1000.0, progress)
            else:
                base = await self._completed()
                while True:
                    await self._sleep(1.0, progress)
                    if await self._completed() - base >= o.measurement_request_count:
                        break
        finally:
            progress.close()
        end_ns = time.time_ns()
        end_server = await self._server_stats()
        self._prev_end_ns, self._prev_server = end_ns, end_server
        snaps = [await e.snapshot_async() for e in self.engines]
        for i, s in enumerate(snaps):
            if s.error:
                raise ProfileError(f"Thread [{i}] had error: {s.error}")
            self._pending.extend(s.records)
        w = PerfStatus(concurrency=level.concurrency, request_rate=level.request_rate,
                       batch_size=level.batch_size, on_sequence_model=level.on_sequence_model)
        valid, keep = [], []
        for r in self._pending:
            end = r[1]
            if start_ns <= end <= end_ns:
                valid.append(r)
            elif end > end_ns:
                keep.append(r)
        self._pending = keep
        if o.request_count and valid:  # one window clamped to the requests (perf_analyzer)
            start_ns = min(r[0] for r in valid)
            end_ns = max(r[1] for r in valid)
        w.windows = [(start_ns, end_ns)]
        w.records = valid if o.profile_export_file else []
        c = w.client
        duration = max(end_ns - start_ns, 1)
        self._client_summary(c, valid, duration)
        try:
            w.stabilizing_latency_ns = summarize_latency(c.latencies, c, o.percentile)
        except ValueError as exc:
            raise ProfileError(str(exc)) from None
        w.client_cores = [s.cpu_s / s.wall_s if s.wall_s > 0 else 0.0 for s in snaps]
        w.overhead_pct = 100.0 * max(w.client_cores or [0.0])
        w.send_request_rate = sum(s.sent for s in snaps) / (duration / 1e9)
        if self.include_server_stats:
            w.server = self._server_summary(start_server or {}, end_server)
        return w

    async def _wait_limited(self, progress: _Progress) -> None:
        waiter = asyncio.ensure_future(asyncio.gather(*[e.wait_done(3600.0)
                                                        for e in self.engines]))
        while not waiter.done():
            await asyncio.wait({waiter}, timeout=0.25)
            await progress.tick(self)
        waiter.result()
        await self._check_errors()

    async def _sleep(self, seconds: float, progress: _Progress) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(left, 0.25))
            await progress.tick(self)
            if progress.ticks % 4 == 0:
                await self._check_errors()
        await self._check_errors()

    def _client_summary(self, c: ClientStats, records: list, duration_ns: int) -> None:
        batch = self.o.batch_size
        c.request_count = len(records)
        c.duration_ns = duration_ns
        lat, req, send, recv, responses, seqs, delayed = [], 0, 0, 0, 0, 0, 0
        for r in records:
            d = r[1] - r[0]
            lat.append(d)
            req += d
            send += r[3]
            recv += r[4]
            responses += r[2]
            flags = r[5]
            if flags & SEQ_END:
                seqs += 1
            if flags & DELAYED:
                delayed += 1
            if flags & NULL_LAST:
                pass
        lat.sort()
        c.latencies = lat
        n = len(records)
        c.completed_count = n
        if n:
            c.avg_request_time_ns = req // n
            c.avg_send_time_ns = send // n
            c.avg_receive_time_ns = recv // n
        c.response_count = responses
        c.sequence_count = seqs
        c.delayed_request_count = delayed
        secs = duration_ns / 1e9
        c.infer_per_sec = n * batch / secs
        c.responses_per_sec = responses / secs
        c.sequence_per_sec = seqs / secs

    def _merge(self, windows: list[PerfStatus], level: PerfStatus) -> None:
        """perf_analyzer's MergePerfStatusReports over the stable windows."""
        c = level.client = ClientStats()
        lat: list[int] = []
        server = ServerStats()
        completed = req = send = recv = 0
        cores: list[list[float]] = []
        for w in windows:
            wc = w.client
            c.request_count += wc.request_count
            c.sequence_count += wc.sequence_count
            c.delayed_request_count += wc.delayed_request_count
            c.response_count += wc.response_count
            c.duration_ns += wc.duration_ns
            lat += wc.latencies
            completed += wc.completed_count
            req += wc.avg_request_time_ns * wc.completed_count
            send += wc.avg_send_time_ns * wc.completed_count
            recv += wc.avg_receive_time_ns * wc.completed_count
            server = server.plus(w.server)
            cores.append(w.client_cores)
            level.windows += w.windows
            level.records += w.records
        level.overhead_pct = sum(w.overhead_pct for w in windows) / len(windows)
        level.send_request_rate = sum(w.send_request_rate for w in windows) / len(windows)
        level.client_cores = [sum(col) / len(col) for col in zip(*cores)] if cores else []
        c.completed_count = completed
        if completed:
            c.avg_request_time_ns = req // completed
            c.avg_send_time_ns = send // completed
            c.avg_receive_time_ns = recv // completed
        level.server = server
        lat.sort()
        c.latencies = lat
        secs = c.duration_ns / 1e9
        c.infer_per_sec = c.request_count * level.batch_size / secs
        c.responses_per_sec = c.response_count / secs
        c.sequence_per_sec = c.sequence_count / secs
        level.stabilizing_latency_ns = summarize_latency(lat, c, self.o.percentile)


def _num(value: float) -> str:
    """A number as C++ iostream prints a double by default (6 significant digits)."""
    return f"{value:.6g}"


class _Progress:
    """A live line during a window (tqdm on stderr; off when stderr is no terminal)."""

    def __init__(self, opts: PerfOptions, level: PerfStatus, trial: int, err: TextIO):
        self.ticks = 0
        self.bar = None
        self.start = time.monotonic()
        self.count_mode = opts.measurement_mode == "count_windows" or opts.request_count > 0
        if not opts.progress:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - the tools extra brings it
            return
        what = (f"concurrency {level.concurrency}" if level.concurrency
                else f"rate {_num(level.request_rate)}/s")
        if self.count_mode:
            total = opts.request_count or opts.measurement_request_count
            unit = "req"
        else:
            total = round(opts.measurement_interval_ms * 1.2 / 1000.0, 1)
            unit = "s"
        self.bar = tqdm(total=total, unit=unit, desc=f"{what} pass {trial + 1}", leave=False,
                        file=err, dynamic_ncols=True)
        self._base: int | None = None

    async def tick(self, profiler: Profiler) -> None:
        self.ticks += 1
        if self.bar is None:
            return
        done = await profiler._completed()
        if self._base is None:
            self._base = done
        elapsed = time.monotonic() - self.start
        rate = (done - self._base) / elapsed if elapsed > 0 else 0.0
        if self.count_mode:
            self.bar.n = min(done - self._base, self.bar.total)
        else:
            self.bar.n = min(round(elapsed, 1), self.bar.total)
        self.bar.set_postfix_str(f"{rate:,.0f} infer/s", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
