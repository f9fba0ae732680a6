"""Images/s and latency of every vision pipeline (examples/vision): served vs in one process.

    .venv/bin/python benchmarks/vision.py [--duration 8] [--warmup 3] [--task NAME ...]

For each pipeline of ``examples/vision/setup_models.py`` (classification,
detection, instance and semantic segmentation, keypoints, oriented detection,
text detection, text recognition, OCR), at client concurrency 1 and 8:

* **served**: naiad (``python -m naiad`` from this checkout, pinned to CPU 0)
  answering tritonclient HTTP requests (one thread per in-flight image, pinned
  to CPU 1), the image file's bytes in, the pipeline's outputs back;
* **in-process**: the same pipeline in one process with no server
  (``examples/vision/inprocess.py``: the same model.py files, the networks
  called with their frameworks directly), as many threads, pinned to CPU 0:
  the ceiling, as the OCR benchmark has it.

Every pipeline gets its own test picture (the shapes scene, a word, a page of
lines). The two paths take turns; ``--rounds`` rounds, each path's best kept.
Results: ``benchmarks/results/vision-<UTC time>.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from harness import pipelines  # noqa: E402

VISION = ROOT / "examples" / "vision"
RESULTS = HERE / "results"
WORK = HERE / ".work" / "vision"


# ------------------------------------------------------------------ children (own process)

def _pictures(out: Path) -> dict[str, Path]:
    """A test picture per pipeline (PNG files)."""
    sys.path.insert(0, str(VISION))
    import pictures

    out.mkdir(parents=True, exist_ok=True)
    files = {"shapes": pictures.scene()[0], "word": pictures.text_line(),
             "page": pictures.page()[0]}
    paths = {}
    for name, data in files.items():
        paths[name] = out / f"{name}.png"
        paths[name].write_bytes(data)
    return paths


def picture_for(name: str) -> str:
    if name.startswith("shapes_"):
        return "shapes"
    return {"text_direction": "word", "text_recognition": "word"}.get(name, "page")


def _inprocess(repo: str, name: str, image: str, concurrency: int, duration: float,
               warmup: float) -> dict:
    import numpy as np

    sys.path.insert(0, str(VISION))
    from inprocess import Pipeline

    pipe = Pipeline(repo, name)
    data = np.frombuffer(Path(image).read_bytes(), dtype=np.uint8)
    pipe({"IMAGE": data})
    return pipelines.threaded_closed_loop(lambda: pipe({"IMAGE": data}), concurrency,
                                          warmup, duration)


def child_main(argv: list[str]) -> int:
    if argv[0] == "inprocess":
        repo, name, image, c, d, w = argv[1:7]
        res = _inprocess(repo, name, image, int(c), float(d), float(w))
    elif argv[0] == "loadgen":
        url, model, inputs, c, d, w = argv[1:7]
        res = pipelines._loadgen(url, model, inputs, int(c), float(d), float(w))
    elif argv[0] == "pictures":
        res = {k: str(v) for k, v in _pictures(Path(argv[1])).items()}
    else:
        raise SystemExit(f"unknown child {argv[0]}")
    print(json.dumps(res))
    return 0


def _child(python: str, cpus: str | None, args: list[str], timeout: float) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    r = subprocess.run(pipelines._pin(cpus) + [python, str(Path(__file__)), "--child", *args],
                       env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       check=False)
    line = next((x for x in reversed(r.stdout.splitlines()) if x.startswith("{")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"{args[0]} failed (rc {r.returncode}): {r.stderr[-1500:]}")
    return json.loads(line)


# ------------------------------------------------------------------ the run

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--task", action="append", default=[],
                    help="only this pipeline (its name or task; repeatable)")
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--client-cpus", default="1")
    args = ap.parse_args(argv)
    python = sys.executable
    sys.path.insert(0, str(VISION))
    import setup_models

    WORK.mkdir(parents=True, exist_ok=True)
    repo = WORK / "model_repository"
    t0 = time.monotonic()
    names = setup_models.build(str(repo), str(VISION / ".models"), args.task or None,
                               log=lambda m: print(m, flush=True))
    setup_s = time.monotonic() - t0
    pics = _child(python, None, ["pictures", str(WORK / "pictures")], 300)
    inputs = {}
    for key, path in pics.items():
        npy = WORK / f"{key}.npy"
        subprocess.run([python, "-c", "import numpy as np; np.save("
                        f"{str(npy)!r}, np.frombuffer(open({path!r}, 'rb').read(), np.uint8))"],
                       check=True)
        spec = WORK / f"{key}.json"
        spec.write_text(json.dumps({"IMAGE": ["UINT8", str(npy)]}))
        inputs[key] = spec
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    server = pipelines.PyNaiad(python, repo, args.server_cpus, WORK / "logs")
    server.start(names, timeout=300)
    rows = []
    try:
        for name in names:
            pic = picture_for(name)
            for c in (1, 8):
                best: dict[str, dict] = {}
                for _ in range(args.rounds):
                    for path in ("served", "in-process"):
                        if path == "served":
                            r = _child(python, args.client_cpus,
                                       ["loadgen", server.url, name, str(inputs[pic]), str(c),
                                        str(args.duration), str(args.warmup)], 900)
                        else:
                            r = _child(python, args.server_cpus,
                                       ["inprocess", str(repo), name, pics[pic], str(c),
                                        str(args.duration), str(args.warmup)], 900)
                        print(f"{name:<20} {path:<10} c={c}: {r['per_s']} images/s, "
                              f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms"
                              f"{' ERRORS ' + str(r['errors']) if r.get('errors') else ''}",
                              flush=True)
                        if path not in best or (r["per_s"] or 0) > (best[path]["per_s"] or 0):
                            best[path] = r
                for path, r in best.items():
                    rows.append({"pipeline": name, "path": path, **r})
    finally:
        server.stop()
    result = {"started": started.isoformat(), "host": platform.node(),
              "cpus": os.cpu_count(), "load_before": load_before,
              "load_after": os.getloadavg(), "setup_s": round(setup_s, 1),
              "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
              "server_cpus": args.server_cpus, "client_cpus": args.client_cpus, "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%S")
    (RESULTS / f"vision-{stamp}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"vision-{stamp}.md").write_text(markdown(result))
    print(f"results: benchmarks/results/vision-{stamp}.md")
    return 0


def markdown(result: dict) -> str:
    lines = [f"# Vision pipelines, served vs in one process ({result['started'][:19]} UTC)", "",
             f"{result['cpus']} CPUs; naiad and the in-process runs on CPU "
             f"{result['server_cpus']}, the tritonclient HTTP load on CPU "
             f"{result['client_cpus']}; {result['duration_s']:.0f} s measured after "
             f"{result['warmup_s']:.0f} s warm-up, best of {result['rounds']} rounds; load "
             f"average {result['load_before'][0]:.1f} before, {result['load_after'][0]:.1f} "
             "after.", "",
             "| pipeline | c | served images/s | p50 ms | p99 ms | in-process images/s | "
             "p50 ms | p99 ms | served / in-process |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {(r["pipeline"], r["concurrency"], r["path"]): r for r in result["rows"]}
    for name in dict.fromkeys(r["pipeline"] for r in result["rows"]):
        for c in (1, 8):
            s, p = by.get((name, c, "served")), by.get((name, c, "in-process"))
            if not s or not p:
                continue
            ratio = (s["per_s"] / p["per_s"]) if s["per_s"] and p["per_s"] else None
            lines.append(f"| {name} | {c} | {s['per_s']} | {s['p50_ms']} | {s['p99_ms']} | "
                         f"{p['per_s']} | {p['p50_ms']} | {p['p99_ms']} | "
                         f"{ratio:.2f} |" if ratio else "| n/a |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
