"""What ``naiad perf`` prints and writes, in perf_analyzer's words and columns.

* :func:`print_settings` — the ``*** Measurement Settings ***`` block;
* :func:`print_level` — a level's ``Client:`` and ``Server:`` sections;
* :func:`print_summary` — ``Inferences/Second vs. Client ... Batch Latency``;
* :func:`write_csv` — ``-f``: perf_analyzer's CSV (same columns, same order,
  rows sorted by throughput, ``<model>_v<version>.<file>`` per composing model
  of an ensemble);
* :func:`write_export` — ``--profile-export-file``: perf_analyzer's JSON
  (experiments, requests with timestamps, window boundaries);
* :func:`plot` — ``--plot``: throughput against latency (naiad's addition).
"""

from __future__ import annotations

import os
from typing import TextIO

import orjson

from naiad.tools.perf.model import ModelInfo
from naiad.tools.perf.options import NO_LIMIT, PerfOptions
from naiad.tools.perf.stats import PerfStatus, ServerStats

CLIENT_BOUND_CORES = 0.85


def _num(value: float) -> str:
    return f"{value:.6g}"


def print_settings(o: PerfOptions, model: ModelInfo, out: TextIO) -> None:
    p = lambda s="": print(s, file=out)  # noqa: E731
    p("*** Measurement Settings ***")
    p(f"  Batch size: {o.batch_size}")
    p("  Service Kind: TRITON")
    if o.warmup_request_count > 0:
        p(f"  Sending {o.warmup_request_count} warmup request"
          f"{'s' if o.warmup_request_count > 1 else ''}")
    if o.request_count:
        p(f"  Sending {o.request_count} benchmark request{'s' if o.request_count > 1 else ''}")
    else:
        p(f"  Using \"{o.measurement_mode}\" mode for stabilization")
        metric = "throughput" if o.async_mode else "latency and throughput"
        if o.percentile == -1:
            p(f"  Stabilizing using average {metric}")
        else:
            p(f"  Stabilizing using p{o.percentile} {metric}")
        if o.measurement_mode == "time_windows":
            p(f"  Measurement window: {o.measurement_interval_ms} msec")
        else:
            p(f"  Minimum number of samples in each window: {o.measurement_request_count}")
    if o.mode == "concurrency" and o.concurrency_range[1] != 1:
        p(f"  Latency limit: {o.latency_threshold_ms} msec")
        if o.concurrency_range[1] != NO_LIMIT:
            p(f"  Concurrency limit: {max(o.concurrency_range[0], o.concurrency_range[1])} "
              "concurrent requests")
    if o.mode == "request_rate" and o.request_rate_range[1] != 1.0:
        p(f"  Latency limit: {o.latency_threshold_ms} msec")
        if o.request_rate_range[1] != NO_LIMIT:
            p(f"  Request Rate limit: "
              f"{_num(max(o.request_rate_range[0], o.request_rate_range[1]))} "
              "requests per seconds")
    if o.mode == "request_rate":
        if o.request_distribution == "poisson":
            p("  Using poisson distribution on request generation")
        else:
            p("  Using uniform distribution on request generation")
    if o.binary_search:
        p("  Using Binary Search algorithm")
    if o.async_mode:
        p("  Using asynchronous calls for inference")
    else:
        p("  Using synchronous calls for inference")
    if model.decoupled:
        p("  Detected decoupled model, using the first response for measuring latency")
    if o.workers > 1:
        p(f"  Using {o.workers} load-generating processes")
    p()


def _overhead(cumm: int, queue: int, compute: int) -> int:
    return cumm - queue - compute if cumm > queue + compute else 0


def _server(stats: ServerStats, iteration: int, model: ModelInfo, out: TextIO) -> None:
    ident = " " * (2 * iteration)
    p = lambda s: print(s, file=out)  # noqa: E731
    cnt = stats.success_count
    if cnt == 0:
        p(f"{ident}  Request count: {cnt}")
        return
    avg = ServerStats.avg_us
    cumm = avg(stats.cumm_time_ns, cnt)
    p(f"{ident}  Inference count: {stats.inference_count}")
    p(f"{ident}  Execution count: {stats.execution_count}")
    if model.response_cache:
        p(f"{ident}  Cache hit count: {stats.cache_hit_count}")
        p(f"{ident}  Cache miss count: {stats.cache_miss_count}")
    p(f"{ident}  Successful request count: {cnt}")
    line = f"{ident}  Avg request latency: {cumm} usec"
    if not stats.composing:
        queue = avg(stats.queue_time_ns, stats.queue_count)
        c_in = avg(stats.compute_input_time_ns, stats.compute_input_count)
        c_inf = avg(stats.compute_infer_time_ns, stats.compute_infer_count)
        c_out = avg(stats.compute_output_time_ns, stats.compute_output_count)
        n = stats.compute_input_count
        compute = avg(stats.compute_time_ns, n)
        hit = avg(stats.cache_hit_time_ns, stats.cache_hit_count)
        miss = avg(stats.cache_miss_time_ns, stats.cache_miss_count)
        if model.response_cache:
            combined = avg(stats.cache_hit_time_ns + stats.cache_miss_time_ns +
                           stats.compute_time_ns, n + stats.cache_hit_count)
            p(f"{line} (overhead {_overhead(cumm, queue, combined)} usec + queue {queue} usec "
              f"+ cache hit/miss {combined} usec)")
            p(f"{ident}{ident}  Average Cache Hit Latency: {hit} usec")
            p(f"{ident}{ident}  Average Cache Miss Latency: {miss + compute} usec (cache "
              f"lookup/insertion {miss} usec + compute input {c_in} usec + compute infer "
              f"{c_inf} usec + compute output {c_out} usec)")
        else:
            p(f"{line} (overhead {_overhead(cumm, queue, compute)} usec + queue {queue} usec + "
              f"compute input {c_in} usec + compute infer {c_inf} usec + compute output "
              f"{c_out} usec)")
        return
    # an ensemble: the composing models' times add up
    queue = compute = hit = miss = combined = 0
    for s in stats.composing.values():
        queue += avg(s.queue_time_ns, s.queue_count)
        compute += avg(s.compute_time_ns, s.compute_input_count)
        hit += avg(s.cache_hit_time_ns, s.cache_hit_count)
        miss += avg(s.cache_miss_time_ns, s.cache_miss_count)
        combined += avg(s.cache_hit_time_ns + s.cache_miss_time_ns + s.compute_time_ns,
                        s.compute_input_count + s.cache_hit_count)
    if model.response_cache:
        if not model.top_level_cache:
            p(f"{line} (overhead {_overhead(cumm, queue, combined)} usec + queue {queue} usec "
              f"+ cache hit/miss {combined} usec)")
        else:
            p(line)
        p(f"{ident}{ident}  Average Cache Hit Latency: {hit} usec")
        p(f"{ident}{ident}  Average Cache Miss Latency: {miss + compute} usec ")
        p("")
    else:
        p(f"{line} (overhead {_overhead(cumm, queue, compute)} usec + queue {queue} usec + "
          f"compute {compute} usec)")
        p("")
    p(f"{ident}Composing models: ")
    for (name, version), s in stats.composing.items():
        p(f"{ident}{name}, version: {version}")
        _server(s, iteration + 1, model, out)


def print_level(s: PerfStatus, o: PerfOptions, model: ModelInfo, include_server: bool,
                out: TextIO) -> None:
    p = lambda x: print(x, file=out)  # noqa: E731
    c = s.client
    p("  Client: ")
    p(f"    Request count: {c.request_count}")
    delay_pct = 100.0 * c.delayed_request_count / c.request_count if c.request_count else 0.0
    if delay_pct > 1.0:
        p(f"    Avg send request rate: {s.send_request_rate:.2f} infer/sec")
        p(f"    [WARNING] Perf Analyzer was not able to keep up with the desired request "
          f"rate. {delay_pct:.2f}% of the requests were delayed. ")
    if s.on_sequence_model:
        p(f"    Sequence count: {c.sequence_count} ({_num(c.sequence_per_sec)} seq/sec)")
    p(f"    Throughput: {_num(c.infer_per_sec)} infer/sec")
    if model.decoupled:
        p(f"    Response Throughput: {_num(c.responses_per_sec)} infer/sec")
    if o.verbose:
        p(f"    Avg client overhead: {s.overhead_pct:.2f}%")
    if o.percentile == -1:
        p(f"    Avg latency: {c.avg_latency_ns // 1000} usec (standard deviation {c.std_us} "
          "usec)")
    for pct, value in c.percentile_latency_ns.items():
        p(f"    p{pct} latency: {value // 1000} usec")
    if not model.decoupled:  # perf_analyzer reports client library times for these only
        req = c.avg_request_time_ns // 1000
        send = c.avg_send_time_ns // 1000
        recv = c.avg_receive_time_ns // 1000
        wait = req - send - recv
        if o.protocol == "grpc":
            p(f"    Avg gRPC time: {req} usec ((un)marshal request/response {send + recv} usec "
              f"+ response wait {wait} usec)")
        else:
            p(f"    Avg HTTP time: {req} usec (send/recv {send + recv} usec + response wait "
              f"{wait} usec)")
    else:
        p("    ")
    if include_server:
        p("  Server: ")
        _server(s.server, 1, model, out)
    if s.client_cores and max(s.client_cores) >= CLIENT_BOUND_CORES:
        p("[WARNING] Perf Analyzer is not able to keep up with the desired load. The results "
          "may not be accurate.")
        cores = ", ".join(f"{c:.2f}" for c in s.client_cores)
        p(f"[WARNING] naiad perf: the load generator used {cores} CPU core"
          f"{'s' if len(s.client_cores) > 1 else ''} per process (client-bound at "
          f">= {CLIENT_BOUND_CORES}); add --workers to spread it over more processes.")
    p("")
    out.flush()


def print_summary(statuses: list[PerfStatus], o: PerfOptions, out: TextIO) -> None:
    if not statuses:
        return
    which = "Average Batch Latency" if o.percentile == -1 else f"p{o.percentile} Batch Latency"
    print(f"Inferences/Second vs. Client {which}", file=out)
    for s in statuses:
        head = (f"Concurrency: {s.concurrency}" if o.mode == "concurrency"
                else f"Request Rate: {_num(s.request_rate)}")
        print(f"{head}, throughput: {_num(s.client.infer_per_sec)} infer/sec, latency "
              f"{s.stabilizing_latency_ns // 1000} usec", file=out)
    out.flush()


def csv_header(o: PerfOptions, model: ModelInfo, include_server: bool,
               percentiles: list[int]) -> list[str]:
    cols = ["Concurrency" if o.mode == "concurrency" else "Request Rate", "Inferences/Second"]
    if model.decoupled:
        cols.append("Response Throughput")
    cols.append("Client Send")
    if include_server:
        cols += ["Network+Server Send/Recv", "Server Queue", "Server Compute Input",
                 "Server Compute Infer", "Server Compute Output"]
        if model.response_cache:
            cols += ["Server Cache Hit", "Server Cache Miss"]
    cols.append("Client Recv")
    cols += [f"p{p} latency" for p in percentiles]
    if o.verbose_csv:
        if o.percentile == -1:
            cols.append("Avg latency")
        cols += ["request/response", "response wait"]
    return cols


def csv_rows(statuses: list[PerfStatus], o: PerfOptions, model: ModelInfo,
             include_server: bool) -> list[list]:
    rows = []
    for s in sorted(statuses, key=lambda x: x.client.infer_per_sec):
        c = s.client
        row: list = [s.concurrency if o.mode == "concurrency" else _num(s.request_rate),
                     _num(c.infer_per_sec)]
        if model.decoupled:
            row.append(_num(c.responses_per_sec))
        row.append(c.avg_send_time_ns // 1000)
        if include_server:
            st = s.server
            queue_ns = st.queue_time_ns // st.queue_count if st.queue_count else 0
            cin = st.compute_input_time_ns // st.compute_input_count \
                if st.compute_input_count else 0
            cinf = st.compute_infer_time_ns // st.compute_infer_count \
                if st.compute_infer_count else 0
            cout = st.compute_output_time_ns // st.compute_output_count \
                if st.compute_output_count else 0
            compute = st.compute_time_ns // st.compute_input_count \
                if st.compute_input_count else 0
            hit = st.cache_hit_time_ns // st.cache_hit_count if st.cache_hit_count else 0
            miss = st.cache_miss_time_ns // st.cache_miss_count if st.cache_miss_count else 0
            wait = c.avg_latency_ns - c.avg_send_time_ns - c.avg_receive_time_ns
            accounted = queue_ns + compute + hit + miss
            network = wait - accounted if wait > accounted else 0
            row += [network // 1000, queue_ns // 1000, cin // 1000, cinf // 1000, cout // 1000]
            if model.response_cache:
                row += [hit // 1000, miss // 1000]
        row.append(c.avg_receive_time_ns // 1000)
        row += [v // 1000 for v in c.percentile_latency_ns.values()]
        if o.verbose_csv:
            if o.percentile == -1:
                row.append(c.avg_latency_ns // 1000)
            send, recv = c.avg_send_time_ns // 1000, c.avg_receive_time_ns // 1000
            row += [send + recv, c.avg_request_time_ns // 1000 - send - recv]
        rows.append(row)
    return rows


def write_csv(path: str, statuses: list[PerfStatus], o: PerfOptions, model: ModelInfo,
              include_server: bool) -> None:
    if not statuses:
        return
    percentiles = list(statuses[0].client.percentile_latency_ns)
    lines = [",".join(csv_header(o, model, include_server, percentiles))]
    lines += [",".join(str(v) for v in row)
              for row in csv_rows(statuses, o, model, include_server)]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    if not include_server or not statuses[0].server.composing:
        return
    # one file per composing model of an ensemble, in the ensemble's format
    folder, base = os.path.split(path)
    ordered = sorted(statuses, key=lambda x: x.client.infer_per_sec)
    for key in statuses[0].server.composing:
        name, version = key
        head = ["Concurrency" if o.mode == "concurrency" else "Request Rate",
                "Inferences/Second", "Client Send", "Network+Server Send/Recv", "Server Queue",
                "Server Compute Input", "Server Compute Infer", "Server Compute Output"]
        if model.response_cache:
            head += ["Server Cache Hit", "Server Cache Miss"]
        head.append("Client Recv")
        out = [",".join(head)]
        for s in ordered:
            st = s.server.composing.get(key, ServerStats())
            top = s.server.success_count
            ratio = st.success_count / top if top else 0.0
            avg_ns = (lambda t, n: t // n if n else 0)  # noqa: E731
            queue = avg_ns(st.queue_time_ns, st.queue_count)
            compute = avg_ns(st.compute_time_ns, st.compute_input_count)
            hit = avg_ns(st.cache_hit_time_ns, st.cache_hit_count)
            miss = avg_ns(st.cache_miss_time_ns, st.cache_miss_count)
            overhead = avg_ns(st.cumm_time_ns, st.success_count)
            overhead = overhead - (queue + compute + hit + miss) \
                if overhead > queue + compute + hit + miss else 0
            row = [s.concurrency if o.mode == "concurrency" else _num(s.request_rate),
                   _num(ratio * s.client.infer_per_sec), 0, overhead // 1000, queue // 1000,
                   avg_ns(st.compute_input_time_ns, st.compute_input_count) // 1000,
                   avg_ns(st.compute_infer_time_ns, st.compute_infer_count) // 1000,
                   avg_ns(st.compute_output_time_ns, st.compute_output_count) // 1000]
            if model.response_cache:
                row += [hit // 1000, miss // 1000]
            row.append(0)
            out.append(",".join(str(v) for v in row))
        with open(os.path.join(folder, f"{name}_v{version}.{base}"), "w") as f:
            f.write("\n".join(out) + "\n")


def write_export(path: str, statuses: list[PerfStatus], o: PerfOptions, model: ModelInfo,
                 streams) -> None:
    """perf_analyzer's profile export: experiments with every request's timestamps."""
    from naiad.tools.perf.transports import _json_list

    flat = [step for stream in streams for step in stream]
    inputs_json = [{name: (_json_list(v)[0] if v.array.size == 1 and v.datatype != "BYTES"
                           else _json_list(v)) for name, v in step.items()} for step in flat]
    experiments = []
    for s in statuses:
        mode = "concurrency" if o.mode == "concurrency" else "request_rate"
        requests = []
        for r in sorted(s.records, key=lambda x: x[0]):
            start, end, _, _, _, _, seq_id, index, extra = r
            times, outputs = extra if extra else (None, None)
            entry = {"timestamp": start}
            if seq_id:
                entry["sequence_id"] = seq_id
            entry["request_inputs"] = inputs_json[index] if index < len(inputs_json) else {}
            entry["response_timestamps"] = list(times) if times else [end]
            entry["response_outputs"] = outputs or []
            requests.append(entry)
        boundaries = sorted({t for w in s.windows for t in w})
        experiments.append({"experiment": {"mode": mode, "value": s.concurrency if
                                           o.mode == "concurrency" else s.request_rate},
                            "requests": requests, "window_boundaries": boundaries})
    from naiad import __version__

    doc = {"experiments": experiments, "version": f"naiad {__version__}",
           "service_kind": "triton", "endpoint": ""}
    with open(path, "wb") as f:
        f.write(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))


def plot(path: str, statuses: list[PerfStatus], o: PerfOptions, title: str) -> None:
    """Throughput (x) against latency (y, p50/p99 and the stabilizing latency) per level."""
    try:
        import matplotlib
    except ImportError:
        from naiad.core.extras import install_hint

        raise RuntimeError(f"--plot needs matplotlib: {install_hint('tools')}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [s.level for s in statuses]
    ips = [s.client.infer_per_sec for s in statuses]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for pct, style in ((50, "o-"), (99, "s--")):
        ax.plot(ips, [s.client.percentile_latency_ns.get(pct, 0) / 1e6 for s in statuses],
                style, label=f"p{pct} latency")
    if o.percentile == -1:
        ax.plot(ips, [s.client.avg_latency_ns / 1e6 for s in statuses], "^:",
                label="avg latency")
    for x, y, lv in zip(ips, [s.client.percentile_latency_ns.get(99, 0) / 1e6
                              for s in statuses], levels):
        ax.annotate(f"{'c' if o.mode == 'concurrency' else 'r'}={lv:g}", (x, y),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("throughput (infer/sec)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
