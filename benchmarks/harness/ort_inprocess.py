"""In-process onnxruntime baseline for the MiniLM benchmark (run as a subprocess).

Calls ``InferenceSession.run`` back to back on the same token batch the served
benchmark sends, with the same session options as the served model's
config.pbtxt, for a bounded time after a warm-up, and prints one JSON line:
infer/s, p50/p99 latency, onnxruntime version, and the first embedding (for the
served-vs-in-process correctness check). run.py starts it pinned to the server's
CPU with taskset.

    cd benchmarks && python -m harness.ort_inprocess --model M.onnx --duration 10 --warmup 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from harness.models import MINILM_BATCH, MINILM_SEQ, minilm_tokens

OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
              "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=MINILM_BATCH)
    ap.add_argument("--seq", type=int, default=MINILM_SEQ)
    ap.add_argument("--intra", type=int, default=1)
    ap.add_argument("--inter", type=int, default=1)
    ap.add_argument("--opt-level", default="all", choices=sorted(OPT_LEVELS))
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--mix", default="",
                    help="SIZE:COUNT,...: run this mix of batch sizes (shuffled, repeated) "
                         "instead of --batch, e.g. the histogram a dynamic batcher executed")
    a = ap.parse_args()

    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = a.intra
    so.inter_op_num_threads = a.inter
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[a.opt_level])
    t0 = time.perf_counter()
    sess = ort.InferenceSession(a.model, sess_options=so, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t0
    names = {i.name for i in sess.get_inputs()}

    def make_feed(batch: int) -> dict:
        return {k: np.asarray(v, dtype=np.int64).reshape(batch, a.seq)
                for k, v in minilm_tokens(batch, a.seq).items() if k in names}

    if a.mix:
        import random
        sizes = []
        for part in a.mix.split(","):
            size, count = part.split(":")
            sizes += [int(size)] * int(count)
        random.Random(0).shuffle(sizes)  # the batcher's mix, in no particular order
        by_size = {b: make_feed(b) for b in set(sizes)}
        feeds = [by_size[b] for b in sizes]
        a.batch = max(sizes)
    else:
        feeds = [make_feed(a.batch)]
    feed = feeds[0]
    out_names = [o.name for o in sess.get_outputs()]

    end = time.perf_counter() + a.warmup
    first = sess.run(out_names, make_feed(a.batch))[0]
    k = 0
    while time.perf_counter() < end:
        sess.run(out_names, feeds[k % len(feeds)])
        k += 1

    lat = []
    items = 0
    cpu_start = time.process_time()
    start = time.perf_counter()
    end = start + a.duration
    k = 0
    while True:
        feed = feeds[k % len(feeds)]
        k += 1
        t = time.perf_counter()
        sess.run(out_names, feed)
        t2 = time.perf_counter()
        lat.append(t2 - t)
        items += len(next(iter(feed.values())))
        if t2 >= end and (not a.mix or k >= len(feeds)):
            break
    elapsed = t2 - start
    cpu_s = time.process_time() - cpu_start
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, round(p / 100.0 * (len(lat) - 1)))] * 1e3

    print("NAIAD_ORT_JSON " + json.dumps({
        "onnxruntime": ort.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
        "session_load_s": round(load_s, 3), "requests": len(lat), "duration_s": round(elapsed, 3),
        "infer_per_s": round(items / elapsed, 2),
        "p50_ms": round(pct(50), 3), "p90_ms": round(pct(90), 3), "p99_ms": round(pct(99), 3),
        "mean_ms": round(sum(lat) / len(lat) * 1e3, 3), "max_ms": round(lat[-1] * 1e3, 3),
        # CPU time per inference: unlike the rate, barely moved by other load on the CPU
        "cpu_ms_per_infer": round(cpu_s * 1e3 / items, 4),
        "session_options": {"intra_op_num_threads": a.intra, "inter_op_num_threads": a.inter,
                            "execution_mode": "ORT_SEQUENTIAL",
                            "graph_optimization_level": OPT_LEVELS[a.opt_level]},
        "batch": a.batch, "seq": a.seq, "mix": a.mix or None,
        "embedding0": [float(x) for x in first.reshape(a.batch, -1)[0]],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
